"""``statmech-nn models``: the registered models with their size and shape."""

from __future__ import annotations

import argparse

import torch


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the registered models (CCT variants, VGGs)",
        description=(
            "List every model name that 'statmech-nn train --model NAME' accepts, with its "
            "parameter count (in millions), number of tokens at its native image size, number of "
            "layers (encoder blocks or conv layers), attention heads and embedding width d."
        ),
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=10,
        help="size of the classification head used for the parameter count (default: 10)",
    )
    parser.set_defaults(func=run)


def _row(name: str, num_classes: int) -> list[str]:
    from statmech_nn import models

    with torch.device("meta"):
        model = models.create(name, num_classes=num_classes)
    config = getattr(model, "config", {})
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if "num_layers" in config:
        shape = [
            str(model.num_tokens),
            str(config["num_layers"]),
            str(config["num_heads"]),
            str(config["embedding_dim"]),
        ]
    elif "widths" in config:
        convs = sum(not isinstance(w, str) for w in config["widths"])
        shape = ["-", str(convs), "-", "-"]
    else:
        shape = ["-"] * 4
    return [name, f"{params:.3f}", str(config.get("img_size", "-")), *shape]


def run(args: argparse.Namespace) -> int:
    from statmech_nn import models

    header = ["name", "params(M)", "img", "tokens", "layers", "heads", "d"]
    rows = [header] + [_row(name, args.num_classes) for name in models.names()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
