"""Phase 2: linear readouts from frozen site activations to the labels (docs/methods.md section 3).

``modules``: the readouts (``seqpool``, ``flatten``, ``mean``) and their seeded initialisation;
``config``: :class:`ReadoutConfig`; ``training``: :func:`train_readouts` and :func:`evaluate`;
``cache`` / ``cached``: the activation cache that lets every epoch reuse one backbone pass;
``batched``: equal-shape readouts as one module; ``fit``: the SGD, schedule and update every
readout fit uses; ``loading``: loaders and devices.
"""

from statmech_nn.readout.batched import BatchedReadout
from statmech_nn.readout.config import ReadoutConfig
from statmech_nn.readout.loading import make_loader, progress_bar, resolve_device
from statmech_nn.readout.modules import (
    READOUTS,
    FlattenReadout,
    MeanReadout,
    Readout,
    SeqPoolReadout,
    make_readout,
    site_seed,
)
from statmech_nn.readout.training import deterministic_algorithms, evaluate, train_readouts

__all__ = [
    "READOUTS",
    "BatchedReadout",
    "FlattenReadout",
    "MeanReadout",
    "Readout",
    "ReadoutConfig",
    "SeqPoolReadout",
    "deterministic_algorithms",
    "evaluate",
    "make_loader",
    "make_readout",
    "progress_bar",
    "resolve_device",
    "site_seed",
    "train_readouts",
]
