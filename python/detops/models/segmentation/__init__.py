"""Semantic segmentation models: FCN-32s/16s/8s with convolutionized
classifiers, torchvision's ``fcn_resnet50`` layout, and U-Net."""

from .fcn import FCN, SkipFCN, convolutionize, convolutionize_linear, fcn_resnet50
from .unet import UNet, segmentation_loss, segmentation_postprocess

__all__ = [
    "FCN", "SkipFCN", "convolutionize", "convolutionize_linear", "fcn_resnet50",
    "UNet", "segmentation_loss", "segmentation_postprocess",
]
