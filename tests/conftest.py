"""Shared fixtures: small real GeoTIFFs written with rasterio into ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp

#: Real sample rasters shared by the project (see MANIFEST.tsv there).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

DEFAULT_TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)


def write_tif(
    path: str | Path,
    array: np.ndarray,
    *,
    nodata: float | None = None,
    dtype: str | None = None,
    transform: Affine = DEFAULT_TRANSFORM,
    crs: str | None = "EPSG:32633",
    tiled: bool = True,
    blocksize: int = 32,
    scales: Sequence[float] | None = None,
    offsets: Sequence[float] | None = None,
    descriptions: Sequence[str | None] | None = None,
    alpha: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    compress: str | None = None,
) -> Path:
    """Write ``array`` (``(bands, h, w)`` or ``(h, w)``) as a GeoTIFF and return its path.

    ``alpha`` (``(h, w)``, 0 = transparent) is appended as a last band with alpha colour
    interpretation; ``mask`` (``(h, w)`` bool, True = valid) is written as a GDAL internal
    per-dataset mask. ``tiled=False`` writes strips of ``blocksize`` rows.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    dtype = dtype or array.dtype.name
    count, height, width = array.shape
    total = count + (1 if alpha is not None else 0)
    profile: dict = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": total,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    else:
        profile.update(tiled=False, blockysize=blocksize)
    if compress:
        profile["compress"] = compress
    env = {"GDAL_TIFF_INTERNAL_MASK": True} if mask is not None else {}
    with rasterio.Env(**env), rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(dtype), indexes=list(range(1, count + 1)))
        if alpha is not None:
            dst.write(np.asarray(alpha).astype(dtype), total)
            interp = [ColorInterp.gray] * count + [ColorInterp.alpha]
            dst.colorinterp = interp
        if scales is not None:
            dst.scales = list(scales) + [1.0] * (total - count)
        if offsets is not None:
            dst.offsets = list(offsets) + [0.0] * (total - count)
        if descriptions is not None:
            for i, name in enumerate(descriptions, start=1):
                dst.set_band_description(i, name)
        if mask is not None:
            dst.write_mask(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8))
    return path


@pytest.fixture
def make_tif(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_tif(name_or_path, array, **options)`` -> path of a new GeoTIFF.

    A relative name is created inside the test's ``tmp_path``; see :func:`write_tif` for the
    options.
    """

    def factory(path: str | Path, array: np.ndarray, **kwargs) -> Path:
        path = Path(path)
        if not path.is_absolute():
            path = tmp_path / path
        return write_tif(path, array, **kwargs)

    return factory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-raster folder; skips the test when it is not there."""
    if not (SHARED_DATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"shared sample rasters not found at {SHARED_DATA}")
    return SHARED_DATA
