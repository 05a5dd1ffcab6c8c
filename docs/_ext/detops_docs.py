"""Sphinx helpers for the detops docs.

* ``.. detops-api:: MODULE`` documents every name in ``MODULE.__all__`` (so a
  new public name cannot be left out), each followed by the torchvision
  function it replaces, linked, where there is one.
* ``.. bench-table:: PATH`` renders a committed benchmark JSON as the op table
  (so the table cannot drift from the measurements).
* Every public name must have a docstring: one without fails the build.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.util import logging

logger = logging.getLogger(__name__)

TORCHVISION_DOCS = "https://pytorch.org/vision/stable/generated/{}.html"

# detops name -> the torchvision object it stands in for.
TORCHVISION_EQUIVALENTS = {
    "box_iou": "torchvision.ops.box_iou",
    "generalized_box_iou": "torchvision.ops.generalized_box_iou",
    "distance_box_iou": "torchvision.ops.distance_box_iou",
    "complete_box_iou": "torchvision.ops.complete_box_iou",
    "generalized_box_iou_loss": "torchvision.ops.generalized_box_iou_loss",
    "distance_box_iou_loss": "torchvision.ops.distance_box_iou_loss",
    "complete_box_iou_loss": "torchvision.ops.complete_box_iou_loss",
    "nms": "torchvision.ops.nms",
    "batched_nms": "torchvision.ops.batched_nms",
    "roi_align": "torchvision.ops.roi_align",
    "RoIAlign": "torchvision.ops.RoIAlign",
    "MultiScaleRoIAlign": "torchvision.ops.MultiScaleRoIAlign",
    "roi_pool": "torchvision.ops.roi_pool",
    "RoIPool": "torchvision.ops.RoIPool",
    "ps_roi_align": "torchvision.ops.ps_roi_align",
    "PSRoIAlign": "torchvision.ops.PSRoIAlign",
    "ps_roi_pool": "torchvision.ops.ps_roi_pool",
    "PSRoIPool": "torchvision.ops.PSRoIPool",
    "sigmoid_focal_loss": "torchvision.ops.sigmoid_focal_loss",
    "box_convert": "torchvision.ops.box_convert",
    "box_area": "torchvision.ops.box_area",
    "clip_boxes_to_image": "torchvision.ops.clip_boxes_to_image",
    "remove_small_boxes": "torchvision.ops.remove_small_boxes",
    "masks_to_boxes": "torchvision.ops.masks_to_boxes",
    "conv_transpose2d": "torch.nn.functional.conv_transpose2d",
    "ConvTranspose2d": "torch.nn.ConvTranspose2d",
    "fcn_resnet50": "torchvision.models.segmentation.fcn_resnet50",
    "retinanet_resnet50_fpn": "torchvision.models.detection.retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2": "torchvision.models.detection.retinanet_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn": "torchvision.models.detection.fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2": "torchvision.models.detection.fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn": "torchvision.models.detection.maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2": "torchvision.models.detection.maskrcnn_resnet50_fpn_v2",
}
TORCH_DOCS = "https://pytorch.org/docs/stable/generated/{}.html"


def _public_names(module_name: str) -> list[tuple[str, object]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:
        raise ValueError(f"{module_name} has no __all__: the docs document exactly its public names")
    return [(n, getattr(module, n)) for n in names]


def _data_doc(module_name: str, name: str) -> str:
    return getattr(importlib.import_module(module_name), "__data_docs__", {}).get(name, "")


def _equivalent_line(name: str) -> list[str]:
    target = TORCHVISION_EQUIVALENTS.get(name)
    if target is None:
        return []
    url = (TORCH_DOCS if target.startswith("torch.") and not target.startswith("torchvision") else TORCHVISION_DOCS)
    return ["", f"   *Replaces* `{target} <{url.format(target)}>`_.", ""]


class DetopsApi(Directive):
    """Document every public name of a module."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        lines: list[str] = []
        for name, obj in _public_names(module_name):
            if inspect.ismodule(obj):
                continue
            qual = f"{module_name}.{name}"
            # A name that detops' top level also exports (detops.nn.PSRoIAlign is
            # detops.PSRoIAlign) is indexed once, under detops.
            again = module_name != "detops" and getattr(importlib.import_module("detops"), name, None) is obj
            if inspect.isclass(obj):
                lines += [f".. autoclass:: {qual}", "   :members:", "   :show-inheritance:"]
                lines += ["   :no-index:"] if again else []
            elif callable(obj):
                lines += [f".. autofunction:: {qual}"]
            else:
                # data has no docstring of its own: its module describes it in __data_docs__
                doc = _data_doc(module_name, name)
                lines += [f".. py:data:: {qual}", "", *[f"   {line}" for line in doc.splitlines()]]
            lines += _equivalent_line(name) or [""]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<detops-api {module_name}>"), self.content_offset, node)
        return node.children


class BenchTable(Directive):
    """The op table from a committed ``python -m detops.bench`` JSON."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        _, abs_path = env.relfn2path(self.arguments[0], env.docname)  # relative to this document
        path = Path(abs_path).resolve()
        env.note_dependency(str(path))
        data = json.loads(path.read_text())
        env_info = data["environment"]
        table = [["op", "case", "size", "detops", "baseline", "speed-up"]]
        for r in data["results"]:
            speedup = r.get("speedup")
            table.append([
                f"``{r['op']}``", r["name"], r.get("size", ""), _fmt_time(r.get("detops_ms")),
                f"{_fmt_time(r.get('baseline_ms'))} ({r.get('baseline_name', '')})",
                f"{speedup:.2f}x" if isinstance(speedup, (int, float)) else "-",
            ])
        lines = [
            f"Measured on {env_info.get('device_name', env_info['device'])} ({env_info['device']}, "
            f"{env_info.get('cpu_threads', '?')} threads), torch {env_info['torch']}, torchvision "
            f"{env_info['torchvision']}, detops commit ``{env_info.get('detops_commit', '?')}``, {env_info.get('date', '')}:",
            "", ".. list-table::", "   :header-rows: 1", "",
        ]
        for row in table:
            lines.append("   * - " + row[0])
            lines += [f"     - {cell}" for cell in row[1:]]
        node = nodes.section()
        node.document = self.state.document
        self.state.nested_parse(StringList(lines, source=str(path)), self.content_offset, node)
        return node.children


def _fmt_time(ms: object) -> str:
    if not isinstance(ms, (int, float)):
        return "-"
    return f"{ms * 1000:.1f} us" if ms < 1 else f"{ms:.2f} ms"


def check_docstrings(app) -> None:
    """Fail the build on a public name without a docstring."""
    for module_name in app.config.detops_public_modules:
        for name, obj in _public_names(module_name):
            if inspect.ismodule(obj):
                continue
            if not (inspect.isclass(obj) or callable(obj)):
                if not _data_doc(module_name, name).strip():
                    logger.warning(f"{module_name}.{name} is public data without an entry in {module_name}.__data_docs__")
                continue
            if not (inspect.getdoc(obj) or "").strip():
                logger.warning(f"{module_name}.{name} has no docstring (every public name needs one)")


def setup(app):
    app.add_config_value("detops_public_modules", [], "env")
    app.add_directive("detops-api", DetopsApi)
    app.add_directive("bench-table", BenchTable)
    app.connect("builder-inited", check_docstrings)
    return {"parallel_read_safe": True, "version": "1"}
