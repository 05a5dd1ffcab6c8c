"""The package says what it needs: its version names the torch and CUDA it
was built for, build_info() agrees, an incompatible torch is an ImportError in
words (never a loader error), and commands whose optional dependencies are
missing name the extra that installs them and still do their main work."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LOADER_ERRORS = ("undefined symbol", "cannot open shared object", "OSError")


def run_python(code: str, tmp_path: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # Run from a neutral folder: the result must not depend on the source tree.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path or Path.cwd(), timeout=timeout)


def pretend_torch(monkeypatch, version: str, cuda: str | None) -> None:
    """Make the running torch report another version / CUDA (what detops checks)."""
    import torch

    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.version, "cuda", cuda)


def test_version_names_torch_and_cuda():
    import torch

    import detops

    info = detops.build_info()
    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    cuda = f"cu{info['cuda_version'].replace('.', '')}" if info["cuda"] else "cpu"
    assert detops.__version__ == info["version"] == importlib.metadata.version("detops")
    assert detops.__version__.endswith(f"+torch{major_minor}.{cuda}")
    assert info["torch_requirement"] == f"torch=={major_minor}.*"
    requires = importlib.metadata.requires("detops") or []
    assert f"torch=={major_minor}.*" in requires


def test_import_under_other_torch_version_is_clear(tmp_path):
    # The whole import, in a fresh interpreter: the check runs before _C loads.
    result = run_python("""
        import torch
        torch.__version__ = "2.13.0+cpu"
        torch.version.cuda = None
        import detops
    """, tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: detops ") and "torch 2.13.0+cpu is installed" in last, last
    assert "torch==" in last and "pip" in last, last
    assert not any(e in result.stderr for e in LOADER_ERRORS), result.stderr


def test_cuda_build_under_cpu_only_torch_is_clear(monkeypatch):
    import torch

    from detops import _build

    version = torch.__version__.split("+")[0]
    pretend_torch(monkeypatch, version + "+cpu", None)
    if not _build._config.CUDA:
        assert _build.torch_mismatch() is None  # a CPU build runs under a CPU-only torch
        return
    with pytest.raises(ImportError, match="need a CUDA build of torch, and this torch is CPU-only"):
        _build.check_torch()


def test_cuda_build_under_other_cuda_major_is_clear(monkeypatch):
    import torch

    from detops import _build

    if not _build._config.CUDA:
        pytest.skip("only a CUDA build links against a CUDA runtime")
    pretend_torch(monkeypatch, torch.__version__, "99.0")
    with pytest.raises(ImportError, match=r"link against CUDA .* this torch uses CUDA 99\.0"):
        _build.check_torch()


def test_same_torch_other_patch_release_is_accepted(monkeypatch):
    import torch

    from detops import _build

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    pretend_torch(monkeypatch, f"{major}.{minor}.99", torch.version.cuda)
    assert _build.torch_mismatch() is None


@pytest.mark.skipif(os.environ.get("DETOPS_EXPECT_TORCH_MISMATCH") != "1",
                    reason="run by scripts/test_wheel.sh in an environment with another torch installed")
def test_wheel_under_another_torch():
    """The real thing: this Python has a torch the installed wheel was not built for."""
    result = run_python("import detops")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    print(last)
    assert last.startswith("ImportError: detops ") and "needs" in last and "pip" in last, last
    assert not any(e in result.stderr for e in LOADER_ERRORS), result.stderr


def test_bench_without_optional_dependencies(monkeypatch, capsys, tmp_path):
    from detops.bench.__main__ import main

    # sys.modules[name] = None makes `import name` fail as if it were not installed.
    missing = ("tqdm", "matplotlib", "pycocotools", "faster_coco_eval")
    for module in missing:
        monkeypatch.setitem(sys.modules, module, None)
    code = main(["--quick", "--ops", "box_coder,coco_map", "--repeats", "1", "--min-time", "0",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    for module in missing:
        assert f"needs {module}, which is not installed: pip install 'detops[bench]'" in err
    assert "speed-up" in out and "box_coder" in out  # the table
    rows = json.loads((tmp_path / "bench-cpu-quick.json").read_text())["results"]
    assert rows and all("error" not in r for r in rows)
    assert not (tmp_path / "bench-cpu-quick.png").exists()


def test_plot_without_matplotlib_names_the_extra(monkeypatch, tmp_path):
    import detops.eval

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'detops\[eval\]'"):
        detops.eval.plot_pr_curves(None, str(tmp_path / "pr.png"))  # type: ignore[arg-type]


def test_metadata_provider_labels(monkeypatch):
    """tools/detops_build_meta.py: the label and pin a build gets (CPU-only when asked or without nvcc)."""
    import torch

    tools = Path(__file__).resolve().parents[1] / "tools"
    if not (tools / "detops_build_meta.py").exists():
        pytest.skip("needs the source tree")
    monkeypatch.syspath_prepend(str(tools))
    import detops_build_meta as meta

    major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    assert meta.dynamic_metadata("dependencies", {"extra": ["numpy"]}) == [f"torch=={major_minor}.*", "numpy"]
    monkeypatch.setenv("DETOPS_WITH_CUDA", "0")
    assert meta.dynamic_metadata("version", {"base": "0.1.0"}) == f"0.1.0+torch{major_minor}.cpu"
    monkeypatch.setenv("DETOPS_WITH_CUDA", "1")
    monkeypatch.setattr(meta, "find_nvcc", lambda: None)
    assert meta.dynamic_metadata("version", {"base": "0.1.0"}) == f"0.1.0+torch{major_minor}.cpu"
    monkeypatch.setattr(meta, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert meta.dynamic_metadata("version", {"base": "0.1.0"}) == f"0.1.0+torch{major_minor}.cu130"
