"""The swappable parts of a run, each in a registry: networks, losses, optimizers and schedules, augmentations.

A config section names a registered component and sets its options (``segtune list`` shows them
all); :mod:`segtune.registry` checks the options against the builder's signature. Beside them,
:mod:`segtune.components.transfer` moves a batch's host draws to the device without a GPU stall.
"""

from segtune.components.augment import AUGMENTATIONS
from segtune.components.losses import LOSSES
from segtune.components.models import (MODELS, PadToMultiple, build_model, count_parameters, encoder_modules,
                                       encoder_state, load_encoder_weights, load_pretrained_encoder,
                                       set_encoder_trainable)
from segtune.components.optim import OPTIMIZERS, SCHEDULERS, WarmupPlateau, build_scheduler
from segtune.components.weights import read_tensors

__all__ = [
    "AUGMENTATIONS", "LOSSES", "MODELS", "OPTIMIZERS", "SCHEDULERS", "PadToMultiple", "WarmupPlateau", "build_model",
    "build_scheduler", "count_parameters", "encoder_modules", "encoder_state", "load_encoder_weights",
    "load_pretrained_encoder", "read_tensors", "set_encoder_trainable",
]
