"""The guides' shell commands run, at toy sizes.

Every ``.. code-block:: bash`` of docs/guides is split into commands, and each
command must be one that a runner below knows: the runner runs it as written,
with only its sizes made small (appended flags win in argparse), its output
folder moved into a temporary one, and machine-specific values (GPU counts,
host names, ports, a COCO path) replaced by local ones. A guide command that
no runner knows fails here, so the guides cannot show a command that CI never
ran. (Python blocks run as doctests in ``scripts/docs.sh``; the wheel guide
includes ``scripts/build_wheel.sh``, which ``scripts/test_wheel.sh`` runs.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GUIDES = Path(__file__).resolve().parents[1] / "docs" / "guides"

# Flags that make a training run toy-sized: a few optimiser steps on tiny images.
TOY_TRAIN = ["--max-steps", "2", "--epochs", "1", "--image-size", "64", "--train-images", "4",
             "--val-images", "2", "--batch-size", "2", "--no-progress"]
TOY_BENCH = ["--repeats", "1", "--min-time", "0", "--no-compile"]
TIMEOUT_S = 600


def bash_commands(text: str) -> list[str]:
    """The commands of a reST document's bash code blocks: continuation lines
    joined, comments and blank lines dropped."""
    commands: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != ".. code-block:: bash":
            i += 1
            continue
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
            block.append(lines[i].strip())
            i += 1
        joined = re.sub(r"\s*\\\n", " ", "\n".join(block))
        for line in joined.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def guide_commands() -> list[tuple[str, str]]:
    return [(path.name, cmd) for path in sorted(GUIDES.glob("*.rst")) for cmd in bash_commands(path.read_text())]


def test_the_parser_reads_blocks_continuations_and_comments():
    assert _split_env(["A_B=1", "C=", "python", "X=2"]) == ({"A_B": "1", "C": ""}, ["python", "X=2"])
    text = ("Intro\n\n.. code-block:: bash\n\n   # a comment\n   python -m a --x 1   # why\n"
            "   torchrun --n=2 \\\n       -m b --y 2\n\nAfter the block.\n\n.. code-block:: python\n\n   skipped()\n")
    assert bash_commands(text) == ["python -m a --x 1", "torchrun --n=2 -m b --y 2"]


def test_the_guides_have_shell_commands():
    names = {name for name, _ in guide_commands()}
    assert {"benchmarks.rst", "training.rst"} <= names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _coco_folder(root: Path) -> Path:
    """A COCO-format folder (train.json, val.json, PNG images) of synthetic shapes."""
    from PIL import Image

    from detops.data import SyntheticShapes

    root.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 0), ("val", 1)):
        data = SyntheticShapes(4, 64, seed=seed)
        coco = data.coco_ground_truth()
        for i, image in enumerate(coco["images"]):
            name = f"{split}_{image['id']}.png"
            pixels = (data[i][0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(root / name)
            image["file_name"] = name
        for ann in coco["annotations"]:
            counts = ann["segmentation"]["counts"]
            ann["segmentation"]["counts"] = counts.decode() if isinstance(counts, bytes) else counts
        (root / f"{split}.json").write_text(json.dumps(coco))
    return root


def _outputs_written(out: Path) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["step"] == 2
    assert (out / "predictions.png").stat().st_size > 1000


def _localise(args: list[str], tmp: Path, port: int) -> list[str]:
    """Machine-specific values of a torchrun command made local and small."""
    out = []
    for a in args:
        a = re.sub(r"^--nproc_per_node=\d+$", "--nproc_per_node=1", a)
        a = a.replace("$FIRST_NODE_HOST", "127.0.0.1")
        a = re.sub(r"^--master_port=\d+$", f"--master_port={port}", a)
        out.append(a)
    for i, a in enumerate(out):
        if a == "--device" and out[i + 1] == "cuda":
            out[i + 1] = "cpu"
        if a == "--data" and out[i + 1] not in ("synthetic",):
            out[i + 1] = str(_coco_folder(tmp / "coco"))
        if a == "--out":
            out[i + 1] = str(tmp / out[i + 1])
    return out


def _train_argv(args: list[str], tmp: Path, port: int) -> list[str]:
    """A ``python -m detops.train`` / ``torchrun ... -m detops.train`` command
    as argv, localised, with the toy sizes appended (unless it asks for help)."""
    if args[0] == "torchrun":
        args = [sys.executable, "-m", "torch.distributed.run", *args[1:]]
    elif args[:3] == ["python", "-m", "detops.train"]:
        args = [sys.executable, *args[1:]]
    args = _localise(args, tmp, port)
    return args if "--help" in args else [*args, *TOY_TRAIN]


def _split_env(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` assignments of a shell command, and the rest."""
    env: dict[str, str] = {}
    while args and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", args[0]):
        name, value = args[0].split("=", 1)
        env[name] = value
        args = args[1:]
    return env, args


def _is_train(args: list[str]) -> bool:
    args = _split_env(args)[1]
    return args[:3] == ["python", "-m", "detops.train"] or (args[0] == "torchrun" and "detops.train" in args)


@pytest.mark.parametrize("guide, command", [gc for gc in guide_commands() if gc[0] != "training.rst"])
def test_guide_command_runs(guide, command, tmp_path):
    args = shlex.split(command)
    if args[:3] == ["python", "-m", "detops.bench"]:
        argv = [sys.executable, *args[1:]]
        if "--help" not in argv:
            argv += [*TOY_BENCH, "--out", str(tmp_path / "bench-out")]
        result = _run(argv, tmp_path)
        if "--help" not in argv:
            assert list((tmp_path / "bench-out").glob("bench-*.json")), result.stdout[-2000:]
        return
    pytest.fail(f"{guide}: no test runner knows the command {command!r}; add one to {Path(__file__).name}")


def test_training_guide_commands_run(tmp_path):
    """The training guide's commands, in order: single-process runs, then the
    torchrun forms, where commands with the same --nnodes/--master_addr form one
    multi-node job and run together (each "node" a local process)."""
    commands = [shlex.split(c) for name, c in guide_commands() if name == "training.rst"]
    assert commands
    unknown = [shlex.join(c) for c in commands if not _is_train(c)]
    assert not unknown, f"training.rst: no test runner knows {unknown}"
    i = 0
    while i < len(commands):
        env, args = _split_env(commands[i])
        nnodes = next((int(a.split("=")[1]) for a in args if a.startswith("--nnodes=")), 1)
        port = _free_port()
        group = [_train_argv(_split_env(c)[1], tmp_path, port) for c in commands[i:i + nnodes]]
        assert len(group) == nnodes, f"a {nnodes}-node command needs one line per node: {shlex.join(args)}"
        env = {"OMP_NUM_THREADS": "1", **env}
        procs = [subprocess.Popen(a, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for a in group]
        for argv, proc in zip(group, procs):
            output, _ = proc.communicate(timeout=TIMEOUT_S)
            assert proc.returncode == 0, f"{shlex.join(argv)}\n{output[-4000:]}"
        if "--help" not in group[0]:
            _outputs_written(Path(group[0][group[0].index("--out") + 1]))
        i += nnodes
