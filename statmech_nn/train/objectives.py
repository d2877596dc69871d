"""What a run trains for (``TrainConfig.objective``): the model head and samples of each objective.

``classification`` (the default) trains on ``(inputs, label)`` samples with the model's
classifier. ``mlm`` pre-trains a Hugging Face BERT-style encoder with its masked-language-model
head on a text set: every split is seen through :class:`~statmech_nn.data.mlm.MaskedTokens`
(training masks drawn per epoch, validation and test masks fixed), so the same training step,
evaluation, checkpoints and exact resume serve both (docs/methods.md section 10).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from statmech_nn.data.mlm import MLM_OBJECTIVE, MaskedTokens, masking_for
from statmech_nn.errors import ConfigError
from statmech_nn.foreign.hf import MLM_HEAD
from statmech_nn.train.config import TrainConfig

__all__ = ["is_mlm", "model_overrides", "objective_sets"]


def is_mlm(config: TrainConfig | dict[str, Any]) -> bool:
    """Whether a config (or a stored one, as a dict) pre-trains a masked language model."""
    value = config.get("objective") if isinstance(config, dict) else config.objective
    return value == MLM_OBJECTIVE


def model_overrides(config: TrainConfig) -> dict[str, Any]:
    """The model arguments the objective adds (``head="mlm"``); ConfigError for a non-hf model."""
    if not is_mlm(config):
        return {}
    if not config.model.startswith("hf:"):
        raise ConfigError(
            f"objective mlm pre-trains a Hugging Face BERT-style encoder, not {config.model!r}; "
            "pass --model hf:bert-tiny-text (or hf:bert-6, hf:PATH)"
        )
    return {"head": MLM_HEAD}


def objective_sets(
    config: TrainConfig, splits: Any, train: Dataset, val: Dataset, test: Dataset
) -> tuple[Dataset, Dataset, Dataset]:
    """The train / val / test datasets the objective trains and evaluates on."""
    if not is_mlm(config):
        return train, val, test
    masking = masking_for(splits, config.mlm_probability)
    return (
        MaskedTokens(train, masking, config.seed, "train"),
        MaskedTokens(val, masking, config.seed, "val"),
        MaskedTokens(test, masking, config.seed, "test"),
    )
