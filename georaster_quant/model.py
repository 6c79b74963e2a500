"""GeoRasterCNN: a tile classifier that takes raw band values.

The first operation is the fitted band normalization and clip, in FP32 and never quantized
(DESIGN's one rule). Then come ``quant`` (a slot the quantizer fills with a QuantStub), the
conv blocks, global pooling and a linear head, and ``dequant``. Each block is a
conv-BN-ReLU(-pool) group that can be fused, and each can stay in FP32 on its own when an
accuracy budget asks for it. This file does not import ``torch.ao``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from georaster_quant.arch import ARCHITECTURES, DEFAULT_ARCH, ArchSpec, resolve_arch
from georaster_quant.errors import ConfigError

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "ArchSpec",
    "BandNormalize",
    "GeoRasterCNN",
    "NormalizeQuantize",
    "count_macs",
    "resolve_arch",
]


class BandNormalize(nn.Module):
    """``clamp((x - center) / scale, -clip, clip)`` per band, always in FP32.

    The affine part runs as one inference-mode batch norm (mean ``center``, variance 1,
    weight ``1 / scale``, epsilon 0): a single pass over the batch in eager torch and one
    ``BatchNormalization`` node in ONNX, where subtract-then-multiply took two. (Eager torch
    computes ``x / scale - center / scale``: equal up to float32 rounding.)
    """

    def __init__(self, center: Sequence[float], scale: Sequence[float], clip: float):
        super().__init__()
        if len(center) != len(scale):
            raise ConfigError("normalization center and scale differ in length")
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32).view(1, -1, 1, 1))
        inv = 1.0 / torch.tensor(scale, dtype=torch.float64)
        self.register_buffer("inv_scale", inv.to(torch.float32).view(1, -1, 1, 1))
        self.register_buffer("unit_var", torch.ones(len(center)), persistent=False)
        self.clip = float(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize a raw float32 batch ``(N, C, H, W)``."""
        x = F.batch_norm(
            x.float(),
            self.center.view(-1),
            self.unit_var,
            self.inv_scale.view(-1),
            training=False,
            eps=0.0,
        )
        return x.clamp_(-self.clip, self.clip)  # in place: x is this call's own new tensor


class NormalizeQuantize(nn.Module):
    """:class:`BandNormalize` then per-tensor quantization, as two passes over a batch.

    Gives the same quantized values as ``quantize_per_tensor(normalize(x))`` for every
    non-NaN input (the reader replaces NaN pixels with the fill values), cheaper: the band
    affine is one multiply-add over rows of ``W x C`` values (a view of a channels-last batch:
    no per-pixel band broadcast), and the clip moves after quantization, to the uint8 values,
    where it is the same clip because rounding keeps order. The result is the channels-last
    quantized tensor the first INT8 convolution reads, so it needs no transposing copy. An
    NCHW batch works too; its reshape then costs one float copy. Tiles must be ``width``
    pixels wide, the model's tile size.
    """

    def __init__(self, normalize: BandNormalize, scale: float, zero_point: int, width: int):
        super().__init__()
        mul = normalize.inv_scale.view(-1)
        # One row of a tile, precomputed: a trace then records a constant, not a repeat.
        self.register_buffer("mul", mul.repeat(width))
        self.register_buffer("add", (-normalize.center.view(-1) * mul).repeat(width))
        self.scale, self.zero_point, self.clip = float(scale), int(zero_point), normalize.clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized normalized values ``(N, C, H, W)``, channels-last in memory."""
        n, c, h, w = x.shape
        rows = x.float().permute(0, 2, 3, 1).reshape(n * h, w * c)
        y = torch.addcmul(self.add, rows, self.mul)
        q = torch.quantize_per_tensor(y, self.scale, self.zero_point, torch.quint8)
        q = torch.clamp(q, -self.clip, self.clip)
        return q.view(n, h, w, c).permute(0, 3, 1, 2)


def _block(cin: int, cout: int, kernel: int, stride: int, pool: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        # Odd kernels keep "same" padding; even kernels are patch stems with no padding.
        conv=nn.Conv2d(
            cin, cout, kernel, stride, padding=kernel // 2 if kernel % 2 else 0, bias=False
        ),
        bn=nn.BatchNorm2d(cout),
        relu=nn.ReLU(inplace=False),
    )
    if pool:
        layers["pool"] = nn.MaxPool2d(2)
    return nn.Sequential(layers)


class GeoRasterCNN(nn.Module):
    """Tile classifier: raw bands ``(N, C, T, T)`` float32 in, class logits ``(N, K)`` out.

    Args:
        in_channels: Number of input bands.
        num_classes: Number of classes.
        tile_size: Tile edge in pixels (the model pools globally, so this is a contract).
        arch: A name from :data:`ARCHITECTURES` or an :class:`ArchSpec`.
        center: Per-band raw value mapped to 0 (defaults to 0).
        scale: Per-band raw distance mapped to 1 (defaults to 1).
        clip: Clip after normalization.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        tile_size: int = 64,
        arch: str | ArchSpec = DEFAULT_ARCH,
        center: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
        clip: float = 5.0,
    ):
        super().__init__()
        if in_channels < 1 or num_classes < 2:
            raise ConfigError("a GeoRasterCNN needs at least 1 band and 2 classes")
        spec = resolve_arch(arch)
        self.spec = spec
        self.in_channels, self.num_classes, self.tile_size = in_channels, num_classes, tile_size
        self.normalize = BandNormalize(
            center if center is not None else [0.0] * in_channels,
            scale if scale is not None else [1.0] * in_channels,
            clip,
        )
        self.quant = nn.Identity()
        blocks = [
            _block(in_channels, spec.stem_width, spec.stem_kernel, spec.stem_stride, spec.stem_pool)
        ]
        cin = spec.stem_width
        for i, width in enumerate(spec.widths):
            blocks.append(_block(cin, width, 3, 1, pool=i < len(spec.widths) - 1))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(cin, num_classes)
        self.dequant = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of raw band values."""
        x = self.quant(self.normalize(x))
        for block in self.blocks:
            x = block(x)
        x = torch.flatten(self.pool(x), 1)
        return self.dequant(self.head(self.dropout(x)))

    def fusable_groups(self) -> list[list[str]]:
        """Names of the conv-BN-ReLU groups that quantization fuses."""
        return [
            [f"blocks.{i}.conv", f"blocks.{i}.bn", f"blocks.{i}.relu"]
            for i in range(len(self.blocks))
        ]

    def quantizable_layers(self) -> list[str]:
        """Names of the blocks and head that may each be quantized or kept in FP32."""
        return [f"blocks.{i}" for i in range(len(self.blocks))] + ["head"]


def count_macs(model: GeoRasterCNN) -> int:
    """Multiply-accumulates of the conv and linear layers for one tile."""
    total = 0
    hooks = []

    def conv_hook(mod: nn.Conv2d, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        total += out.shape[1] * out.shape[2] * out.shape[3] * k

    def linear_hook(mod: nn.Linear, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += mod.in_features * mod.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, model.in_channels, model.tile_size, model.tile_size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total
