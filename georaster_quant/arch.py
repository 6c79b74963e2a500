"""GeoRasterCNN architectures as small values, importable without torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from georaster_quant.errors import ConfigError
from georaster_quant.tiling import whole_number


@dataclass(frozen=True)
class ArchSpec:
    """A GeoRasterCNN architecture.

    Args:
        stem_kernel: Kernel of the first conv.
        stem_stride: Stride of the first conv (4 with kernel 4 is a patch stem).
        stem_width: Channels after the stem.
        stem_pool: Max-pool 2x2 after the stem.
        widths: Channels of the 3x3 conv blocks that follow; a 2x2 max-pool sits between them.
        dropout: Dropout before the linear head.
    """

    stem_kernel: int
    stem_stride: int
    stem_width: int
    stem_pool: bool
    widths: tuple[int, ...]
    dropout: float = 0.1

    def __post_init__(self) -> None:
        sizes = (self.stem_kernel, self.stem_stride, self.stem_width, *self.widths)
        if not all(whole_number(v) and v > 0 for v in sizes):
            raise ConfigError(f"kernel, stride and widths must be positive integers: {self}")
        if not self.widths or not isinstance(self.stem_pool, bool):
            raise ConfigError(f"an architecture needs widths and a yes/no stem_pool: {self}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ArchSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "widths": tuple(d["widths"])})  # type: ignore[arg-type]


#: Named architectures. ``seed`` is the original conv3x3-BN-ReLU-maxpool design; the default is
#: chosen by the measured table in docs/models.md.
ARCHITECTURES: dict[str, ArchSpec] = {
    "seed": ArchSpec(3, 1, 16, True, (32, 64)),
    "patch4_s": ArchSpec(4, 4, 16, False, (32, 64)),
    "patch4": ArchSpec(4, 4, 32, False, (64, 96)),
    "patch4_wide": ArchSpec(4, 4, 32, False, (96, 128)),
    "patch4_wider": ArchSpec(4, 4, 32, False, (128, 128)),
    "stride2": ArchSpec(3, 2, 24, True, (48, 96)),
    "large": ArchSpec(3, 2, 32, False, (64, 128, 128)),
}
DEFAULT_ARCH = "patch4"


def resolve_arch(arch: str | ArchSpec) -> ArchSpec:
    """Look up a named architecture (or pass a spec through)."""
    if isinstance(arch, ArchSpec):
        return arch
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
