"""Detection models on detops ops, checkpoint-compatible with torchvision's:
RetinaNet, Faster R-CNN and Mask R-CNN, with batched postprocessing and an
export mode with fixed-size outputs (``model.export_mode(max_detections)``)."""

from .faster_rcnn import FasterRCNN, fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2
from .mask_rcnn import MaskRCNN, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from .retinanet import RetinaNet, retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2

__all__ = [
    "RetinaNet", "FasterRCNN", "MaskRCNN",
    "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2",
    "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
]
