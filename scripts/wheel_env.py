"""Helpers for scripts/test_wheel.sh (run with the development environment's
Python).

``link DIST... --into DIR``: make DIR hold exactly the named distributions and
everything they require (their installed files, symlinked from this
environment), so that a fresh virtual environment given DIR on its path (a
.pth file) sees torch and torchvision without a second multi-gigabyte
install, and nothing else of this environment: not detops, not its source.

``check WHEEL``: the wheel holds what a user needs (the extension, the
build-info file, the Triton kernels, the bench and demo modules, py.typed) and
no torch or CUDA libraries; prints its tag and version.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(names: list[str]) -> list[md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = [(canonicalize_name(n), ()) for n in names]
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        dist = md.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in (*extras, "")
            ):
                continue
            todo.append((canonicalize_name(req.name), tuple(req.extras)))
    return list(seen.values())


def link(names: list[str], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    linked = set()
    for dist in closure(names):
        base = Path(dist.locate_file(""))
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or top in linked:
                continue
            linked.add(top)
            target = into / top
            if not target.exists():
                target.symlink_to(base / top)
    print(f"linked {len(linked)} entries of {sorted(canonicalize_name(n) for n in names)} and their requirements into {into}")


REQUIRED = [
    r"detops/_C\.[^/]*\.so",
    r"detops/_build_config\.py",
    r"detops/py\.typed",
    r"detops/__init__\.py",
    r"detops/demo\.py",
    r"detops/eval/coco\.py",
    r"detops/kernels/box_iou\.py",
    r"detops/bench/__main__\.py",
    r"detops/bench/ops/box_iou\.py",
]
FORBIDDEN = r"(libtorch|libc10|libcudart|libcuda\.|libgomp|libnv)"


def check(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    missing = [p for p in REQUIRED if not any(re.fullmatch(p, n) for n in names)]
    bundled = [n for n in names if re.search(FORBIDDEN, Path(n).name)]
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    requires = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB, {len(names)} files, requires {requires}")
    if missing or bundled:
        sys.exit(f"wheel check FAILED: missing {missing}, bundles {bundled}")
    if not any(r.startswith("torch==") for r in requires):
        sys.exit(f"wheel check FAILED: no pinned torch requirement in {requires}")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("link")
    p.add_argument("dists", nargs="+")
    p.add_argument("--into", type=Path, required=True)
    p = sub.add_parser("check")
    p.add_argument("wheel", type=Path)
    args = parser.parse_args()
    if args.cmd == "link":
        link(args.dists, args.into)
    else:
        check(args.wheel)


if __name__ == "__main__":
    main()
