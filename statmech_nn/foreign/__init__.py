"""Transformers we did not write, analysed by their heads (docs/methods.md section 10).

Hugging Face ``transformers``, timm and torchvision models: per-head capture before the output
projection (``capture``), automatic ``block{i}.mha`` / ``block{i}.ff`` sites per family
(``families``), refusal of heads on post-projection channels (``heads_check``), registry names
``hf:`` / ``timm:`` / ``torchvision:`` (``models``), ``load_foreign`` for weights trained
elsewhere and ``import_run``, which records such a model as an MLflow run (``runs``).
``transformers`` and ``timm`` are the optional extra ``statmech-nn[foreign]``.
"""

from statmech_nn.foreign.capture import install_hook_points, mha_context, remove_hook_points
from statmech_nn.foreign.extras import INSTALL_HINT, MissingExtraError, require
from statmech_nn.foreign.families import attention_point, family_sites, find_blocks
from statmech_nn.foreign.heads_check import check_heads
from statmech_nn.foreign.models import create_foreign, is_foreign, load_foreign, read_state_dict
from statmech_nn.foreign.runs import import_run
from statmech_nn.foreign.wrapper import ForeignModel

__all__ = [
    "INSTALL_HINT",
    "ForeignModel",
    "MissingExtraError",
    "attention_point",
    "check_heads",
    "create_foreign",
    "family_sites",
    "find_blocks",
    "import_run",
    "install_hook_points",
    "is_foreign",
    "load_foreign",
    "mha_context",
    "read_state_dict",
    "remove_hook_points",
    "require",
]
