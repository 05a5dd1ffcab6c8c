# Small helpers for CMakeLists.txt. Each does one thing.

# Ask the Python that runs the build about its torch. We do not use
# find_package(Torch): its CUDA discovery wants cuDNN and friends, and all we
# need is headers, two libraries and the ABI flag.
function(detops_query_torch)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c
      "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__.split('+')[0]); print(torch.version.cuda or ''); print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"
    OUTPUT_VARIABLE _out
    RESULT_VARIABLE _rc
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "detops: cannot import torch with ${Python_EXECUTABLE}; build with --no-build-isolation in an environment that has torch")
  endif()
  string(REPLACE "\n" ";" _lines "${_out}")
  list(GET _lines 0 _dir)
  list(GET _lines 1 _ver)
  list(GET _lines 2 _cuda)
  list(GET _lines 3 _abi)
  set(TORCH_DIR ${_dir} PARENT_SCOPE)
  set(TORCH_VERSION ${_ver} PARENT_SCOPE)
  set(TORCH_CUDA_VERSION "${_cuda}" PARENT_SCOPE)
  set(TORCH_CXX11_ABI ${_abi} PARENT_SCOPE)
  message(STATUS "detops: torch ${_ver} at ${_dir} (CUDA: '${_cuda}')")
endfunction()

function(detops_link_torch target)
  target_include_directories(${target} SYSTEM PRIVATE
    ${TORCH_DIR}/include
    ${TORCH_DIR}/include/torch/csrc/api/include)
  target_link_libraries(${target} PRIVATE
    ${TORCH_DIR}/lib/libc10.so
    ${TORCH_DIR}/lib/libtorch_cpu.so
    ${TORCH_DIR}/lib/libtorch_python.so)   # the eager entries take Python tensors (THPVariable)
  target_compile_definitions(${target} PRIVATE
    _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI}
    TORCH_EXTENSION_NAME=_C)
  # torch is always imported before detops._C, so its libraries are already
  # loaded; the rpath only helps tools such as ldd.
  set_target_properties(${target} PROPERTIES INSTALL_RPATH "$ORIGIN/../torch/lib")
endfunction()

function(detops_enable_openmp target)
  # at::parallel_for runs on torch's OpenMP pool; our kernels only need the
  # compiler flag so that the header-level parallel_for is compiled in.
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_CXX_FOUND)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${OpenMP_CXX_FLAGS}>)
    target_compile_definitions(${target} PRIVATE AT_PARALLEL_OPENMP=1)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
  endif()
endfunction()

# nvcc: $CUDA_HOME/bin first, then the conventional toolkit folder, then PATH.
# A wrapper script on PATH can hide the toolkit layout from CMake, so the
# toolkit's own bin/ wins over PATH.
function(detops_find_nvcc out)
  set(_hints)
  if(DEFINED ENV{CUDA_HOME})
    list(APPEND _hints $ENV{CUDA_HOME}/bin)
  endif()
  if(DEFINED ENV{CUDA_PATH})
    list(APPEND _hints $ENV{CUDA_PATH}/bin)
  endif()
  list(APPEND _hints /usr/local/cuda/bin)
  find_program(_nvcc nvcc HINTS ${_hints} NO_DEFAULT_PATH)
  if(NOT _nvcc)
    find_program(_nvcc nvcc)
  endif()
  set(${out} ${_nvcc} PARENT_SCOPE)
endfunction()

# Turn a TORCH_CUDA_ARCH_LIST-style string ("9.0a;8.0;7.5+PTX") into -gencode
# flags. Machines without a GPU cannot detect one, so the list is explicit:
# DETOPS_CUDA_ARCH_LIST (CMake) > TORCH_CUDA_ARCH_LIST (env) > "9.0a;7.5+PTX"
# (Hopper machine code, plus PTX that any newer card can JIT).
function(detops_cuda_gencode_flags out_flags out_string)
  if(DEFINED DETOPS_CUDA_ARCH_LIST)
    set(_list "${DETOPS_CUDA_ARCH_LIST}")
  elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(_list "$ENV{TORCH_CUDA_ARCH_LIST}")
  else()
    set(_list "9.0a;7.5+PTX")
  endif()
  string(REPLACE " " ";" _list "${_list}")
  set(_flags)
  foreach(_arch IN LISTS _list)
    if(_arch STREQUAL "")
      continue()
    endif()
    set(_ptx OFF)
    if(_arch MATCHES "\\+PTX$")
      set(_ptx ON)
      string(REPLACE "+PTX" "" _arch "${_arch}")
    endif()
    if(NOT _arch MATCHES "^[0-9]+\\.[0-9]+[af]?$")
      message(FATAL_ERROR "detops: bad CUDA arch '${_arch}' in '${_list}'")
    endif()
    string(REPLACE "." "" _num "${_arch}")
    list(APPEND _flags "-gencode=arch=compute_${_num},code=sm_${_num}")
    if(_ptx)
      list(APPEND _flags "-gencode=arch=compute_${_num},code=compute_${_num}")
    endif()
  endforeach()
  string(REPLACE ";" "," _str "${_list}")
  set(${out_flags} ${_flags} PARENT_SCOPE)
  set(${out_string} "${_str}" PARENT_SCOPE)
endfunction()

# The wheel's version carries a local label naming the torch and the CUDA it
# was built for (0.1.0+torch2.14.cu130 / +torch2.14.cpu), chosen before CMake
# runs by tools/detops_build_meta.py. Check that this build is what the label
# says, then write detops/_build_config.py, which `import detops` reads before
# loading _C. Outside scikit-build-core the label is made here.
function(detops_write_build_config)
  string(REGEX MATCH "^[0-9]+\\.[0-9]+" _mm "${TORCH_VERSION}")
  if(DETOPS_CUDA_BUILT)
    string(REPLACE "." "" _cu "${TORCH_CUDA_VERSION}")
    set(_label "torch${_mm}.cu${_cu}")
    set(DETOPS_CUDA_BUILT_PY True)
  else()
    set(_label "torch${_mm}.cpu")
    set(DETOPS_CUDA_BUILT_PY False)
  endif()
  if(DEFINED SKBUILD_PROJECT_VERSION_FULL)
    set(DETOPS_VERSION_FULL "${SKBUILD_PROJECT_VERSION_FULL}")
    if(NOT DETOPS_VERSION_FULL MATCHES "\\+${_label}$")
      message(FATAL_ERROR "detops: this build is +${_label} (torch ${TORCH_VERSION}, CUDA kernels "
        "${DETOPS_CUDA_BUILT}) but its version is ${DETOPS_VERSION_FULL}. Choose a CPU-only build with the "
        "environment variable DETOPS_WITH_CUDA=0 (not a CMake define), so that version and build agree.")
    endif()
  else()
    set(DETOPS_VERSION_FULL "0.0.0+${_label}")   # a plain CMake build has no package version
  endif()
  set(DETOPS_TORCH_MM "${_mm}")
  configure_file(${CMAKE_CURRENT_FUNCTION_LIST_DIR}/build_config.py.in
                 ${CMAKE_CURRENT_BINARY_DIR}/_build_config.py @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/_build_config.py DESTINATION detops)
  message(STATUS "detops: version ${DETOPS_VERSION_FULL}")
endfunction()
