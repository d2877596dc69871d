"""Readout training choices: the science of methods section 3 and how to run it (cache, GPU)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from statmech_nn.errors import ConfigError, UnknownNameError
from statmech_nn.readout.modules import READOUTS

__all__ = ["AUTOCAST", "CACHE_DTYPES", "CACHE_MODES", "ReadoutConfig"]

CACHE_MODES = ("memory", "disk", "none")
CACHE_DTYPES = ("bf16", "fp32")
AUTOCAST = ("bf16", "fp16", "none")
# Machine-local choices: not stored with the results (they do not change them).
_LOCAL_FIELDS = ("cache_dir", "cache_budget")


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"readout {name} {value!r}: choose one of {', '.join(choices)}")


@dataclass
class ReadoutConfig:
    """Readout training choices (docs/methods.md section 3 defaults) and how training runs.

    ``cache``: train every epoch on site activations computed once (``memory``: in RAM, or on
    the GPU when training there; ``disk``: memory-mapped files in ``cache_dir``, default the
    system's temporary folder) or rerun the backbone every batch (``none``, the reference:
    fp32, no batching, no compile). ``cache_dtype`` is ``bf16`` (half the bytes) or ``fp32``
    (the same readouts as ``none`` within float tolerance). ``cache_budget``: bytes the cache
    may take (default: half of what is free in RAM, GPU memory or on disk); sites that do not
    fit together are cached in groups by depth. ``batched``: equal-shape readouts trained as
    one batched module (default: on CUDA). ``autocast``: mixed precision of cached training on
    CUDA (``bf16`` needs no loss scaling, ``fp16`` uses a GradScaler). ``compile``:
    ``torch.compile`` the cached step. ``deterministic``: deterministic kernels (warning where
    none exists).
    """

    readout: str = "seqpool"
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-3
    batch_size: int = 128
    schedule: str = "cosine"
    seed: int = 0
    num_workers: int = 0
    cache: str = "memory"
    cache_dtype: str = "bf16"
    cache_dir: str | None = None
    cache_budget: int | None = None
    batched: bool | None = None
    autocast: str = "bf16"
    compile: bool = False
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise UnknownNameError(
                f"unknown readout {self.readout!r}: choose one of {', '.join(READOUTS)}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise UnknownNameError(
                f"unknown schedule {self.schedule!r}: choose 'cosine' or 'constant'"
            )
        self._check_numbers()
        _choice("cache", self.cache, CACHE_MODES)
        _choice("cache_dtype", self.cache_dtype, CACHE_DTYPES)
        _choice("autocast", self.autocast, AUTOCAST)
        if self.cache_dir and self.cache != "disk":
            raise ConfigError(f"readout cache_dir is for cache='disk', not {self.cache!r}")
        if self.cache == "none" and (self.batched or self.compile):
            raise ConfigError(
                "batched and compiled readouts train on the cache: not with cache='none'"
            )
        if self.cache_budget is not None and (
            isinstance(self.cache_budget, bool) or int(self.cache_budget) <= 0
        ):
            raise ConfigError(
                f"readout cache_budget must be a positive byte count, got {self.cache_budget!r}"
            )

    def _check_numbers(self) -> None:
        problems = []
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0 (got {self.epochs})")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1 (got {self.batch_size})")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if not self.momentum >= 0:
            problems.append(f"momentum must be >= 0 (got {self.momentum})")
        if self.nesterov and not self.momentum > 0:
            problems.append("Nesterov momentum needs momentum > 0")
        if not self.weight_decay >= 0:
            problems.append(f"weight decay must be >= 0 (got {self.weight_decay})")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0 (got {self.num_workers})")
        if problems:
            raise ConfigError("readout " + "; ".join(problems))

    def to_json(self) -> str:
        """The choices stored with results (machine-local ones, e.g. ``cache_dir``, left out)."""
        stored = {k: v for k, v in asdict(self).items() if k not in _LOCAL_FIELDS}
        return json.dumps(stored, sort_keys=True)
