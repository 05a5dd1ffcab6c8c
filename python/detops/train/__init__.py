"""Training and evaluation out of the box: ``python -m detops.train`` (see
:mod:`detops.train.cli`), or :func:`train` with a :class:`TrainConfig`."""

from .engine import TrainConfig, evaluate, train
from .sync_bn import SyncBatchNorm, convert_sync_batchnorm
from .zoo import MODELS, ModelSpec

__all__ = ["TrainConfig", "train", "evaluate", "MODELS", "ModelSpec", "SyncBatchNorm", "convert_sync_batchnorm"]

__data_docs__ = {
    "MODELS": "The models ``python -m detops.train --model`` accepts: name -> a function of the "
              ":class:`TrainConfig` returning the :class:`ModelSpec` (build, losses, predictions).",
}
