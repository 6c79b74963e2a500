"""Model bundles: a folder with ``bundle.json`` and a plain state dict, validated on load.

A bundle never contains code: weights are loaded with ``torch.load(weights_only=True)`` and
the metadata is checked against a versioned schema before anything is built from it. Reading
the metadata alone (``read_meta``) does not import torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from georaster_quant import __version__
from georaster_quant.errors import BundleError
from georaster_quant.io import atomic_path, check_output_path
from georaster_quant.tiling import TileGrid

if TYPE_CHECKING:
    from georaster_quant.model import GeoRasterCNN

SCHEMA_VERSION = 1
BUNDLE_KIND = "georaster_quant.bundle"
META_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
QUANT_TYPES = ("fp32", "fp16", "dynamic_int8", "static_int8", "per_channel_int8", "qat_int8")
#: The types whose activations are INT8 too (calibrated, or trained for it).
STATIC_TYPES = ("static_int8", "per_channel_int8", "qat_int8")
#: Quantized engines and activation observers a bundle may record.
ENGINES = ("fbgemm", "x86", "qnnpack")
OBSERVERS = ("minmax", "moving_average", "histogram")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassInfo(_Strict):
    """One output class."""

    name: str
    color: tuple[int, int, int]

    @field_validator("name")
    @classmethod
    def _listable(cls, value: str) -> str:
        if not value.strip() or "," in value:
            raise ValueError(f"a class name must be non-empty and without commas, got {value!r}")
        return value  # maps list the names comma-separated in their CLASSES tag

    @field_validator("color")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in value):
            raise ValueError(f"colour components must be 0-255, got {list(value)}")
        return value


class InputContract(_Strict):
    """What the model expects as input: raw values of these bands, nodata filled."""

    bands: list[int]
    band_names: list[str | None]
    dtype: str
    nodata: float | None
    fill_values: list[float]
    tile_size: int
    default_stride: int
    pixel_size: tuple[float, float] | None
    label_footprint: int

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        import numpy as np

        try:
            np.dtype(value)
        except TypeError:
            raise ValueError(f"not a data type: {value!r}") from None
        return value

    @field_validator("pixel_size")
    @classmethod
    def _positive_size(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not all(v > 0 for v in value):
            raise ValueError(f"pixel sizes must be positive, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _grid(self) -> InputContract:
        if self.tile_size < 1 or self.label_footprint < 1:
            raise ValueError("tile_size and label_footprint must be positive")
        if not 1 <= self.default_stride <= self.tile_size:
            raise ValueError(
                f"default_stride must be 1..tile_size ({self.tile_size}), got {self.default_stride}"
            )
        return self

    def grid(self, height: int, width: int, stride: int | None = None) -> TileGrid:
        """The prediction grid of a ``height`` x ``width`` raster (default stride if None)."""
        return TileGrid(
            height, width, self.tile_size, self.default_stride if stride is None else stride
        )


class Normalization(_Strict):
    """The fitted band normalization applied inside the model."""

    mode: Literal["zscore", "minmax", "percentile"]
    center: list[float]
    scale: list[float]
    clip: float
    stats: dict[str, Any]

    @model_validator(mode="after")
    def _usable(self) -> Normalization:
        if not self.clip > 0:
            raise ValueError(f"clip must be positive, got {self.clip}")
        if not all(v > 0 for v in self.scale):
            raise ValueError(f"scales must be positive, got {self.scale}")
        return self


class Architecture(_Strict):
    """How to rebuild the module."""

    name: str
    spec: dict[str, Any]
    in_channels: int
    num_classes: int
    tile_size: int

    @field_validator("spec")
    @classmethod
    def _buildable(cls, value: dict[str, Any]) -> dict[str, Any]:
        from georaster_quant.arch import ArchSpec

        try:
            ArchSpec.from_dict(value)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not an architecture ({exc})") from None
        return value


class Quantization(_Strict):
    """How the weights were quantized (``fp32``: not at all)."""

    type: Literal[QUANT_TYPES] = "fp32"  # type: ignore[valid-type]
    engine: str | None = None
    observer: str | None = None
    per_channel: bool | None = None
    fp32_layers: list[str] = []
    calibration: dict[str, Any] | None = None
    details: dict[str, Any] = {}


class Provenance(_Strict):
    """Where the model came from."""

    package_version: str
    training_raster: str
    training_raster_sha256: str
    created: str
    source_bundle: str | None = None


class WeightsInfo(_Strict):
    """The weight file and its checksum."""

    file: str
    sha256: str
    size_bytes: int

    @field_validator("file")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        if not value or Path(value).name != value or value in (".", ".."):
            raise ValueError(f"must be a file name inside the bundle, got {value!r}")
        return value


class BundleMeta(_Strict):
    """Contents of ``bundle.json``."""

    schema_version: int
    kind: Literal["georaster_quant.bundle"]
    model_name: str
    architecture: Architecture
    input: InputContract
    normalization: Normalization
    classes: list[ClassInfo]
    quantization: Quantization = Quantization()
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}
    provenance: Provenance
    weights: WeightsInfo | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        n = self.architecture.in_channels
        for name, seq in (
            ("input.bands", self.input.bands),
            ("input.band_names", self.input.band_names),
            ("input.fill_values", self.input.fill_values),
            ("normalization.center", self.normalization.center),
            ("normalization.scale", self.normalization.scale),
        ):
            if len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries, the model has {n} input bands")
        if len(self.classes) != self.architecture.num_classes:
            raise ValueError(
                f"{len(self.classes)} classes listed, the model has {self.architecture.num_classes}"
            )
        if self.input.tile_size != self.architecture.tile_size:
            raise ValueError(
                f"input.tile_size {self.input.tile_size} differs from the architecture's "
                f"{self.architecture.tile_size}"
            )
        return self

    @property
    def weights_info(self) -> WeightsInfo:
        """The weight file record; a bundle read from disk always has one."""
        if self.weights is None:
            raise BundleError(f"bundle {self.model_name!r} records no weights")
        return self.weights

    @property
    def quant_type(self) -> str:
        """Quantization type of this bundle."""
        return self.quantization.type

    @property
    def class_names(self) -> list[str]:
        """Class names in output order."""
        return [c.name for c in self.classes]


def with_bundle_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """``paths`` and, for each bundle folder among them, the files that make it up.

    For checking outputs against inputs: no output may replace a bundle's ``bundle.json``,
    weights or exports (other files in the folder, a report say, are not the model).
    """
    from georaster_quant.export import FILE_NAMES

    out = []
    for given in paths:
        out.append(os.fspath(given))
        folder = Path(given)
        if folder.is_dir():
            out += [os.fspath(folder / n) for n in (META_FILE, WEIGHTS_FILE, *FILE_NAMES.values())]
    return out


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def provenance(training_raster: str, source_bundle: str | None = None) -> Provenance:
    """Provenance for a new bundle trained on ``training_raster``."""
    return Provenance(
        package_version=__version__,
        training_raster=os.path.basename(training_raster),
        training_raster_sha256=sha256_file(training_raster)
        if os.path.isfile(training_raster)
        else "",
        created=now_iso(),
        source_bundle=source_bundle,
    )


def read_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read and validate a bundle's metadata (no torch import, no weights read)."""
    folder = Path(path)
    if not folder.exists():
        raise BundleError(f"{folder}: no such bundle")
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a bundle folder (expected a folder with {META_FILE})")
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise BundleError(f"{folder}: missing {META_FILE}; not a georaster_quant bundle")
    try:
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("kind") != BUNDLE_KIND:
        raise BundleError(f"{meta_path}: not a georaster_quant bundle (kind is not {BUNDLE_KIND})")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{meta_path}: schema version {raw.get('schema_version')!r} is not supported "
            f"(this version reads {SCHEMA_VERSION})"
        )
    try:
        meta = BundleMeta.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "bundle"
        raise BundleError(f"{meta_path}: invalid {where}: {err['msg']}") from None
    if meta.weights is None:
        raise BundleError(f"{meta_path}: no weights recorded")
    return meta


def save_bundle(
    path: str | os.PathLike[str],
    model: GeoRasterCNN | Any,
    meta: BundleMeta,
    *,
    overwrite: bool = False,
    verify: Callable[[Path], None] | None = None,
) -> BundleMeta:
    """Write a module's (or a plain) state dict and ``meta`` as a bundle folder, atomically.

    ``verify`` is called with the complete folder before it is moved into place; if it
    raises, nothing is left at ``path``.
    """
    import torch

    out = check_output_path(path, overwrite=overwrite, folder=True, marker=META_FILE)
    # A state dict as given keeps its ``_metadata`` (module versions quantized layers need).
    state = model.state_dict() if hasattr(model, "state_dict") else model
    with atomic_path(out, marker=META_FILE) as tmp:
        tmp.mkdir()
        weights = tmp / WEIGHTS_FILE
        torch.save(state, weights)
        final = meta.model_copy(
            update={
                "model_name": out.name,
                "weights": WeightsInfo(
                    file=WEIGHTS_FILE,
                    sha256=sha256_file(weights),
                    size_bytes=weights.stat().st_size,
                ),
            }
        )
        (tmp / META_FILE).write_text(
            json.dumps(final.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        if verify is not None:
            verify(tmp)
    return final


def load_state_dict(path: str | os.PathLike[str], meta: BundleMeta) -> dict[str, Any]:
    """Load the bundle's weights as tensors only, checking the recorded checksum."""
    import pickle

    import torch

    weights = Path(path) / meta.weights_info.file
    if not weights.is_file():
        raise BundleError(f"{weights}: weight file is missing")
    if sha256_file(weights) != meta.weights_info.sha256:
        raise BundleError(f"{weights}: checksum does not match {META_FILE}; the file was changed")
    try:
        with warnings.catch_warnings():  # quantized tensors warn that they are deprecated
            if meta.quant_type != "fp32":
                warnings.simplefilter("ignore")
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(
            f"{weights}: not a plain tensor state dict; refusing to load it ({first})"
        ) from None
    except OSError as exc:  # e.g. a truncated archive
        reason = exc.strerror or exc
        raise BundleError(f"{weights}: not a readable weight file ({reason})") from None
    if not isinstance(state, dict):
        raise BundleError(f"{weights}: holds a {type(state).__name__}, not a state dict")
    return state


def build_fp32_model(meta: BundleMeta) -> GeoRasterCNN:
    """An untrained FP32 module with the bundle's architecture and normalization."""
    from georaster_quant.model import ArchSpec, GeoRasterCNN

    arch = meta.architecture
    return GeoRasterCNN(
        arch.in_channels,
        arch.num_classes,
        arch.tile_size,
        ArchSpec.from_dict(arch.spec),
        center=meta.normalization.center,
        scale=meta.normalization.scale,
        clip=meta.normalization.clip,
    )


class Bundle:
    """A loaded bundle: its metadata and a ready module in eval mode."""

    def __init__(self, path: str | os.PathLike[str], engine: str | None = None):
        """Load the bundle at ``path``.

        ``engine`` picks the quantized kernels an INT8 model runs on (default: the fastest
        for this CPU, :func:`georaster_quant.quantize.kernel_engine`).
        """
        self.path = Path(path)
        self.meta = read_meta(self.path)
        state = load_state_dict(self.path, self.meta)
        model: Any = build_fp32_model(self.meta)
        q = self.meta.quantization
        #: The quantized engine whose kernels run an INT8 model (None: no INT8 kernels).
        self.engine: str | None = None
        if q.type != "fp32":
            from georaster_quant.quantize import kernel_engine

            self.engine = kernel_engine(q.type, q.engine, engine)
        try:
            if q.type == "fp32":
                model.load_state_dict(state, strict=True)
            else:  # rebuild the quantized structure, then load the plain state dict into it
                from georaster_quant.quantize import QuantConfig, load_state, rebuild

                config = QuantConfig(
                    q.type,
                    q.engine or "fbgemm",
                    q.observer or "minmax",
                    q.per_channel,
                    tuple(q.fp32_layers),
                )
                model = load_state(rebuild(model, config, q.details), state, self.engine)
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(
                f"{self.path}: weights do not fit the architecture ({first})"
            ) from None
        self.model = model.eval()

    def __fspath__(self) -> str:
        """The bundle folder, so a loaded bundle goes wherever a path to one does."""
        return os.fspath(self.path)

    @property
    def size_bytes(self) -> int:
        """Bytes of the weight file on disk."""
        return (self.path / self.meta.weights_info.file).stat().st_size
