"""Training and evaluation out of the box: ``python -m detops.train`` (see
:mod:`detops.train.cli`), or :func:`train` with a :class:`TrainConfig`."""

from .engine import TrainConfig, evaluate, train
from .zoo import MODELS, ModelSpec

__all__ = ["TrainConfig", "train", "evaluate", "MODELS", "ModelSpec"]
