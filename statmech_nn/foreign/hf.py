"""``hf:<name-or-path>``: Hugging Face ``transformers`` classifiers (or masked LMs), built offline.

``<name>`` is a named config below (random weights), a local model directory, or a model id
already in the Hugging Face cache (``local_files_only``: nothing is downloaded). Images (float
tensors) go in as ``pixel_values``, token ids (integer tensors) as ``input_ids`` with the
batch's ``attention_mask`` (``statmech_nn.batches.call_model``), or ``ids != pad_token_id``
without one. The model's config (the non-default values) is kept in
``model.config["hf_config"]`` so a checkpoint rebuilds without the directory. ``head="mlm"``
builds the text model's masked-language-model head instead of a classifier (logits ``[B, T, V]``
over the vocabulary; recorded as ``model.config["head"]``), for MLM pre-training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from statmech_nn.errors import CheckpointError, ConfigError, UnknownNameError
from statmech_nn.foreign.extras import require
from statmech_nn.foreign.wrapper import ForeignModel

_VISION = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification"}
CLASSIFIER, MLM_HEAD = "classifier", "mlm"
HEADS = (CLASSIFIER, MLM_HEAD)
_TINY_TEXT = dict(vocab_size=100, max_position_embeddings=64)

# name: (model_type, config values); vision configs get image_size = img_size (default 32).
# The tiny ViTs start from a wider init (0.1, HF's default is 0.02): they then learn digits in
# a few CPU epochs.
NAMED: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-6": (  # the [NLP-SSB] encoder: 6 blocks, 12 heads of 64, d = 768
        "bert",
        dict(num_hidden_layers=6, num_attention_heads=12, hidden_size=768, intermediate_size=3072),
    ),
    "bert-tiny": (
        "bert",
        dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32)
        | _TINY_TEXT,
    ),
    "bert-tiny-text": (  # trains on textsynth on 2 CPU cores in seconds (vocab up to 512 words)
        "bert",
        dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)
        | dict(vocab_size=512, max_position_embeddings=128),
    ),
    "roberta-tiny": (
        "roberta",
        dict(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32)
        | dict(vocab_size=100, max_position_embeddings=70, pad_token_id=1),
    ),
    "distilbert-tiny": (
        "distilbert",
        dict(n_layers=2, n_heads=2, dim=16, hidden_dim=32) | _TINY_TEXT,
    ),
    "gpt2-tiny": (
        "gpt2",
        dict(n_layer=2, n_head=2, n_embd=16, n_positions=64)
        | dict(vocab_size=100, bos_token_id=1, eos_token_id=1),
    ),
    "vit-tiny-digits": (
        "vit",
        dict(patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2)
        | dict(num_attention_heads=4, intermediate_size=64, initializer_range=0.1),
    ),
    "deit-tiny-digits": (
        "deit",
        dict(patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2)
        | dict(num_attention_heads=4, intermediate_size=64, initializer_range=0.1),
    ),
}


class HFClassifier(ForeignModel):
    """A ``transformers`` classifier (or masked LM) whose ``forward(x)`` returns the logits."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of images ``x`` or token ids ``x`` with their ``attention_mask`` (1 = real).

        Token ids without a mask are masked where they equal the config's ``pad_token_id``.
        """
        if x.is_floating_point():
            return self.net(pixel_values=x).logits
        vocab = getattr(self.net.config, "vocab_size", None)
        if vocab is not None and x.numel() and int(x.max()) >= vocab:
            raise ConfigError(
                f"token id {int(x.max())} is outside the model's vocabulary of {vocab}: cap the "
                f"data's vocabulary (--data-option vocab_size={vocab}) or build a larger model"
            )
        if attention_mask is None:
            pad = getattr(self.net.config, "pad_token_id", None)
            attention_mask = None if pad is None else (x != pad).long()
        return self.net(input_ids=x, attention_mask=attention_mask).logits


def _stored(config: Any) -> dict[str, Any]:
    """The JSON-able non-default values of an HF config, without label names and version."""
    values = config.to_diff_dict()
    for key in ("transformers_version", "id2label", "label2id", "architectures"):
        values.pop(key, None)
    values["model_type"] = config.model_type
    return values


def _auto_class(transformers: Any, model_type: str, head: str = CLASSIFIER) -> Any:
    if head == MLM_HEAD:
        return transformers.AutoModelForMaskedLM
    if model_type in _VISION:
        return getattr(transformers, _VISION[model_type])
    return transformers.AutoModelForSequenceClassification


def _check_head(head: str, model_type: str | None = None) -> None:
    """``head`` is one of :data:`HEADS`, and a masked-LM head is asked only of a text model."""
    if head not in HEADS:
        raise ConfigError(f"hf model head must be one of {', '.join(HEADS)}, got {head!r}")
    if head == MLM_HEAD and model_type in _VISION:
        raise ConfigError(f"a {model_type} model has no masked-language-model head: use a text one")


def _from_config(transformers: Any, config: Any, head: str = CLASSIFIER) -> nn.Module:
    """A randomly initialised classifier (or masked LM) of ``config``."""
    _check_head(head, config.model_type)
    if head == MLM_HEAD:
        try:
            return transformers.AutoModelForMaskedLM.from_config(config)
        except ValueError:
            raise ConfigError(
                f"a {config.model_type} model has no masked-language-model head in transformers; "
                "pick a BERT-style encoder (hf:bert-tiny-text, hf:bert-6)"
            ) from None
    if config.model_type in _VISION:
        return getattr(transformers, _VISION[config.model_type])(config)
    return transformers.AutoModelForSequenceClassification.from_config(config)


def _named_config(transformers: Any, name: str, num_classes: int, img_size: int | None) -> Any:
    model_type, values = NAMED[name]
    values = dict(values)
    if model_type in _VISION:
        values["image_size"] = img_size or 32
    if model_type == "gpt2":
        values["pad_token_id"] = 0  # sequence classification of padded batches needs one
    return transformers.AutoConfig.for_model(model_type, num_labels=num_classes, **values)


def _pretrained(
    transformers: Any, name: str, num_classes: int, head: str = CLASSIFIER
) -> nn.Module:
    """A local directory or a cached model id, with a fresh classifier of ``num_classes`` (or
    its masked-LM head)."""
    local = Path(name).expanduser()
    source = str(local) if local.is_dir() else name
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
        config.num_labels = num_classes
        _check_head(head, config.model_type)
        auto = _auto_class(transformers, config.model_type, head)
        return auto.from_pretrained(
            source, config=config, local_files_only=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as exc:
        if local.is_dir():
            raise CheckpointError(f"hf:{name}: not a loadable model directory ({exc})") from None
        raise UnknownNameError(
            f"hf:{name} is not a local directory, not in the Hugging Face cache (offline) and not "
            f"a named config ({', '.join(sorted(NAMED))})"
        ) from None


def build(
    name: str,
    num_classes: int = 10,
    img_size: int | None = None,
    hf_config: dict[str, Any] | None = None,
    head: str = CLASSIFIER,
    **overrides: Any,
) -> HFClassifier:
    """``hf:<name>`` as a classifier (``head="mlm"``: a masked LM); ``hf_config`` (as stored)
    rebuilds without any files."""
    transformers = require("transformers")
    _check_head(head)
    if hf_config is not None:
        values = {**hf_config, **overrides}
        config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
        config.num_labels = num_classes
        net = _from_config(transformers, config, head)
    elif name in NAMED:
        config = _named_config(transformers, name, num_classes, img_size)
        for key, value in overrides.items():
            setattr(config, key, value)
        net = _from_config(transformers, config, head)
    else:
        net = _pretrained(transformers, name, num_classes, head)
        for key, value in overrides.items():
            setattr(net.config, key, value)
    built: Any = net.config
    stored = _stored(built)
    vision = built.model_type in _VISION
    record = {
        "name": f"hf:{name}",
        "num_classes": num_classes,
        "img_size": int(built.image_size) if vision else img_size,
        "hf_config": stored,
    }
    if head != CLASSIFIER:
        record["head"] = head
    return HFClassifier(net, record)
