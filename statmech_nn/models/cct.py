"""The Compact Convolutional Transformer (Hassani et al. 2021, arXiv:2104.05704) and its variants.

Read top to bottom: conv tokenizer -> positional embedding -> encoder blocks -> final LayerNorm ->
sequence pooling -> one linear head. Module names and state-dict keys are those of the reference
implementation (SHI-Labs/Compact-Transformers, also ``vit_pytorch.cct``), so reference weights
load unchanged. Three parameter-free modules are added as stable hook points for the SNP sites
(docs/methods.md section 3): ``self_attn.heads_out``, ``attn_residual`` and ``mlp_act``.

The encoder block keeps the reference quirk: the residual stream itself is replaced by its
LayerNorm (``norm1``) between the attention and MLP sub-blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from statmech_nn.errors import UnknownNameError
from statmech_nn.models.attention import (  # noqa: F401 - public names of this module
    ATTENTION_PATHS,
    Attention,
    matmul_attention,
    native_bf16_cpu,
    set_attention_path,
    uses_matmul_attention,
)
from statmech_nn.models.registry import register
from statmech_nn.sites import Site

POSITIONAL_EMBEDDINGS = ("learnable", "sine", "none")


class Tokenizer(nn.Module):
    """Conv tokenizer: ``n_conv_layers`` x (bias-free Conv2d, ReLU, MaxPool2d), flattened to tokens.

    Intermediate layers have ``in_planes`` channels (64, hard-coded in the reference); the last has
    ``embedding_dim``. Output ``[B, N, d]`` with ``N = H' * W'``. The convs run channels-last:
    max-pooling is several times faster on CPU that way, and the final ``[B, N, d]`` token
    layout then comes without a copy.
    """

    def __init__(
        self,
        in_channels: int,
        embedding_dim: int,
        n_conv_layers: int,
        kernel_size: int,
        stride: int,
        padding: int,
        pooling_kernel_size: int,
        pooling_stride: int,
        pooling_padding: int,
        in_planes: int = 64,
    ) -> None:
        super().__init__()
        widths = [in_channels] + [in_planes] * (n_conv_layers - 1) + [embedding_dim]
        self.conv_layers = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size, stride, padding, bias=False),
                    nn.ReLU(),
                    nn.MaxPool2d(pooling_kernel_size, pooling_stride, pooling_padding),
                )
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self._geometry = (kernel_size, stride, padding)
        self._pool = (pooling_kernel_size, pooling_stride, pooling_padding)

    def sequence_length(self, img_size: int) -> int:
        """Tokens from an ``img_size`` x ``img_size`` image (computed, no dummy forward)."""
        side = img_size
        for _ in self.conv_layers:
            for k, s, p in (self._geometry, self._pool):
                side = (side + 2 * p - k) // s + 1
        if side < 1:
            raise ValueError(f"img_size {img_size} is too small for this tokenizer")
        return side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layers(x.contiguous(memory_format=torch.channels_last))
        return x.flatten(2).transpose(1, 2)


def sinusoidal_embedding(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoid ``[1, N, d]`` over the flattened token index, as in the reference.

    The angle ``p / 10000^(2 floor(i/2) / d)`` is rounded to float32 before ``sin``/``cos``, like
    the reference, so stored sine tables are reproduced bit for bit.
    """
    position = torch.arange(num_tokens, dtype=torch.float64, device="cpu")[:, None]
    exponent = 2 * (torch.arange(dim, device="cpu") // 2).to(torch.float64) / dim
    angle = (position / 10000.0**exponent).to(torch.float32)
    pe = torch.empty_like(angle)
    pe[:, 0::2] = torch.sin(angle[:, 0::2])
    pe[:, 1::2] = torch.cos(angle[:, 1::2])
    return pe[None]


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob <= 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        scale = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)
        return x * scale

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class TransformerEncoderLayer(nn.Module):
    """The CCT block: ``x = LN_1(x + DropPath(MHA(LN_pre(x))))``, then ``x + DropPath(MLP(x))``.

    ``attn_residual`` (``nn.Identity``) sees the stream before ``norm1``; ``mlp_act`` is the GELU
    as a module so its output (the ``ff_hidden`` units) can be hooked.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
        attention_dropout: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, num_heads, attention_dropout, dropout)
        self.attn_residual = nn.Identity()
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.mlp_act = nn.GELU()
        self.dropout1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn_residual(x + self.drop_path(self.self_attn(self.pre_norm(x))))
        x = self.norm1(x)
        h = self.linear2(self.dropout1(self.mlp_act(self.linear1(x))))
        return x + self.drop_path(self.dropout2(h))


class TransformerClassifier(nn.Module):
    """Positional embedding, encoder blocks, final LayerNorm, sequence pooling, linear head."""

    def __init__(
        self,
        num_tokens: int,
        embedding_dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        dropout: float,
        attention_dropout: float,
        stochastic_depth: float,
        positional_embedding: str,
    ) -> None:
        super().__init__()
        self.positional_emb: nn.Parameter | None
        if positional_embedding == "learnable":
            self.positional_emb = nn.Parameter(torch.zeros(1, num_tokens, embedding_dim))
        elif positional_embedding == "sine":
            pe = sinusoidal_embedding(num_tokens, embedding_dim).to(torch.get_default_device())
            self.positional_emb = nn.Parameter(pe, requires_grad=False)
        else:
            self.positional_emb = None
        self.dropout = nn.Dropout(dropout)
        rates = torch.linspace(0, stochastic_depth, num_layers, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            [
                TransformerEncoderLayer(
                    embedding_dim,
                    num_heads,
                    int(embedding_dim * mlp_ratio),
                    dropout,
                    attention_dropout,
                    rate,
                )
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(embedding_dim)
        self.attention_pool = nn.Linear(embedding_dim, 1)
        self.fc = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.positional_emb is not None:
            x = x + self.positional_emb
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        weights = self.attention_pool(x).softmax(dim=1)
        z = (weights.transpose(1, 2) @ x).squeeze(1)
        return self.fc(z)


class CCT(nn.Module):
    """A CCT; ``config`` holds ``name`` and every constructor argument (JSON-able)."""

    def __init__(
        self,
        name: str = "cct",
        num_classes: int = 10,
        img_size: int = 32,
        positional_embedding: str = "learnable",
        embedding_dim: int = 256,
        num_layers: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        n_conv_layers: int = 1,
        kernel_size: int = 3,
        stride: int | None = None,
        padding: int | None = None,
        pooling_kernel_size: int = 3,
        pooling_stride: int = 2,
        pooling_padding: int = 1,
        in_channels: int = 3,
        dropout: float = 0.0,
        attention_dropout: float = 0.1,
        stochastic_depth: float = 0.1,
    ) -> None:
        super().__init__()
        if positional_embedding not in POSITIONAL_EMBEDDINGS:
            raise UnknownNameError(
                f"unknown positional_embedding {positional_embedding!r}; "
                f"choose one of {', '.join(POSITIONAL_EMBEDDINGS)}"
            )
        stride = max(1, kernel_size // 2 - 1) if stride is None else stride
        padding = max(1, kernel_size // 2) if padding is None else padding
        self.config: dict[str, Any] = {
            "name": name,
            "num_classes": num_classes,
            "img_size": img_size,
            "positional_embedding": positional_embedding,
            "embedding_dim": embedding_dim,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "n_conv_layers": n_conv_layers,
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "pooling_kernel_size": pooling_kernel_size,
            "pooling_stride": pooling_stride,
            "pooling_padding": pooling_padding,
            "in_channels": in_channels,
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "stochastic_depth": stochastic_depth,
        }
        self.tokenizer = Tokenizer(
            in_channels,
            embedding_dim,
            n_conv_layers,
            kernel_size,
            stride,
            padding,
            pooling_kernel_size,
            pooling_stride,
            pooling_padding,
        )
        self.num_tokens = self.tokenizer.sequence_length(img_size)
        self.classifier = TransformerClassifier(
            self.num_tokens,
            embedding_dim,
            num_layers,
            num_heads,
            mlp_ratio,
            num_classes,
            dropout,
            attention_dropout,
            stochastic_depth,
            positional_embedding,
        )
        self.apply(_init_weights)
        learnable = self.classifier.positional_emb
        if positional_embedding == "learnable" and learnable is not None:
            nn.init.trunc_normal_(learnable, std=0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.tokenizer(x))

    def sites(self) -> list[Site]:
        """SNP sites of every block in block order: ``mha``, ``attn_out``, ``ff_hidden``, ``ff``."""
        heads = self.config["num_heads"]
        sites = []
        for i in range(self.config["num_layers"]):
            path = f"classifier.blocks.{i}"
            sites += [
                Site(f"block{i}.mha", "mha", i, f"{path}.self_attn.heads_out", heads=heads),
                Site(f"block{i}.attn_out", "attn_out", i, f"{path}.attn_residual"),
                Site(f"block{i}.ff_hidden", "ff_hidden", i, f"{path}.mlp_act"),
                Site(f"block{i}.ff", "ff", i, path),
            ]
        return sites


def _init_weights(module: nn.Module) -> None:
    """Reference init: trunc-normal 0.02 linears with zero bias, unit LayerNorms, Kaiming convs."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)


def _variant(
    name: str,
    layers: int,
    heads: int,
    dim: int,
    mlp_ratio: float,
    kernel: int,
    convs: int,
    img_size: int,
) -> None:
    """Register ``name`` as a CCT with the given base size and tokenizer."""

    def build(**kwargs: Any) -> CCT:
        arch = dict(
            num_layers=layers,
            num_heads=heads,
            embedding_dim=dim,
            mlp_ratio=mlp_ratio,
            kernel_size=kernel,
            n_conv_layers=convs,
        )
        if kwargs.get("img_size") is None:
            kwargs["img_size"] = img_size
        return CCT(name=name, **{**arch, **kwargs})

    build.__name__ = name
    build.__doc__ = (
        f"CCT-{layers}/{kernel}x{convs} at {img_size}px: {layers} blocks, {heads} heads, "
        f"d={dim}, MLP ratio {mlp_ratio}."
    )
    register(build, model_class=CCT)


for _args in (
    ("cct_2_3x2_32", 2, 2, 128, 1, 3, 2, 32),
    ("cct_4_3x2_32", 4, 2, 128, 1, 3, 2, 32),
    ("cct_6_3x1_32", 6, 4, 256, 2, 3, 1, 32),
    ("cct_7_3x1_32", 7, 4, 256, 2, 3, 1, 32),
    ("cct_7_3x2_32", 7, 4, 256, 2, 3, 2, 32),
    ("cct_7_7x2_224", 7, 4, 256, 2, 7, 2, 224),
    ("cct_14_7x2_224", 14, 6, 384, 3, 7, 2, 224),
    ("cct_14_7x2_384", 14, 6, 384, 3, 7, 2, 384),
):
    _variant(*_args)
