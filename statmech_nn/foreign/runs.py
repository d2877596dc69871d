"""A model trained elsewhere as an MLflow run, so that ``snp``, ``order`` and ``study`` work on it.

:func:`import_run` loads a registry model with weights from a file (state dict or safetensors,
without pickle) or a local Hugging Face directory (:func:`statmech_nn.foreign.load_foreign`),
and records it as a new MLflow run: the model's provenance as params and tags (model name,
weights path and SHA-256, dataset) and its weights as the run's one checkpoint, epoch 0, with the
config that rebuilds the model and its data. Every analysis that reads a training run's checkpoint
then reads this one the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from statmech_nn.errors import ConfigError
from statmech_nn.naming import SOURCE_TAG

"""Tag of a run that holds a model trained elsewhere (value ``foreign``)."""

FOREIGN = "foreign"
IMPORTED_EPOCH = 0
"""The epoch under which the given weights are stored (the run's only checkpoint)."""


def run_config(
    dataset: str,
    model_config: Mapping[str, Any],
    provenance: Mapping[str, Any],
    data_root: str | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """The checkpoint config of an imported model: its data (as training stores them) and origin."""
    return {
        "model": str(model_config.get("name", "")),
        "dataset": dataset,
        "data_root": data_root,
        "download": False,
        "img_size": img_size,
        "val_fraction": float(val_fraction),
        "seed": int(seed),
        "dataset_options": dict(dataset_options or {}),
        "model_config": dict(model_config),
        "source": FOREIGN,
        "weights": str(provenance.get("weights", "")),
        "weights_sha256": str(provenance.get("sha256", "")),
    }


def import_run(
    model: str,
    dataset: str,
    weights: str | None = None,
    data_root: str | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    img_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    experiment: str = "statmech-nn",
    tracking_uri: str | None = None,
) -> str:
    """Record ``model`` with ``weights`` (trained on ``dataset``) as a new MLflow run; its id.

    ``model`` is a registry name (``hf:...``, ``timm:...``, ``torchvision:...`` or one of ours);
    ``weights`` a ``.safetensors`` / torch state dict file or, for ``hf:`` names, a local model
    directory (``hf:PATH`` with no weights works too). The classifier gets the dataset's label
    count. Bad names, files or data raise one-line :class:`~statmech_nn.errors.StatmechError`
    subclasses before any run is created.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.data import data_for_config
    from statmech_nn.foreign.models import load_foreign
    from statmech_nn.train.records import flat_params
    from statmech_nn.train.steps import model_state

    if not model:
        raise ConfigError("give the model's registry name (--model NAME)")
    data = {
        "dataset": dataset,
        "data_root": data_root,
        "img_size": img_size,
        "val_fraction": val_fraction,
        "seed": seed,
        "dataset_options": dict(dataset_options or {}),
    }
    splits = data_for_config(data, augment="none")
    size = img_size if img_size is not None else (getattr(splits, "img_size", None) or None)
    net = load_foreign(model, weights, num_classes=int(splits.num_classes), img_size=size)
    model_config: dict[str, Any] = dict(getattr(net, "config", {}))
    if img_size is None and model_config.get("img_size"):
        size = int(model_config["img_size"])  # a directory's model says what it takes
    provenance = dict(getattr(net, "provenance", {}))
    config = run_config(
        dataset, model_config, provenance, data_root, dataset_options, size, val_fraction, seed
    )
    params = {k: v for k, v in config.items() if k != "model_config"}
    params["num_classes"] = int(splits.num_classes)
    tags = {
        SOURCE_TAG: FOREIGN,
        "model": config["model"],
        "dataset": dataset,
        "weights_sha256": config["weights_sha256"],
    }
    tracking.init_store(tracking_uri)
    run_name = f"{config['model'].rsplit('/', 1)[-1]}-{dataset}"
    with tracking.run(experiment, run_name=run_name, tags=tags) as active:
        run_id = active.info.run_id
        mlflow.log_params(flat_params(params))
        state = model_state(IMPORTED_EPOCH, net, model_config, config)
        tracking.log_checkpoint(run_id, state, IMPORTED_EPOCH)
    return run_id
