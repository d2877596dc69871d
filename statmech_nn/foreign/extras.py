"""The optional libraries of the ``foreign`` extra, imported with a one-line install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

from statmech_nn.errors import StatmechError

INSTALL_HINT = "pip install 'statmech-nn[foreign]'"


class MissingExtraError(StatmechError, ImportError):
    """A library of the ``foreign`` extra (transformers, timm) is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` (``transformers`` / ``timm``), or raise the one-line install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed ({type(exc).__name__}): {INSTALL_HINT}"
        ) from None
