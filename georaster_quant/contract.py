"""Opening a raster for a model: bands mapped onto the bundle's input contract, differences said."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from georaster_quant.bundle import BundleMeta
from georaster_quant.errors import RasterInputError, RasterMismatchWarning
from georaster_quant.io import RasterInfo, RasterReader, read_info, select_bands


def open_input(
    path: str | os.PathLike[str], meta: BundleMeta, bands: Sequence[int] | None = None
) -> RasterReader:
    """Open ``path`` with its bands mapped onto the model's input bands.

    A band-count mismatch is an error before any pixel is read; a different dtype or pixel
    size, or a raster without a CRS or geotransform, is a warning that says what differs.
    """
    info = read_info(path)
    reader = RasterReader(path, bands=select_bands(info, meta.input.band_names, bands))
    warn_differences(reader.info, meta)
    return reader


def open_dataarray(da: Any, meta: BundleMeta, bands: Sequence[int] | None = None) -> Any:
    """:func:`open_input` for an xarray DataArray: a ``DataArrayReader`` on the model's bands.

    Named after the file it was read from, when xarray knows it.
    """
    import xarray as xr

    from georaster_quant.dataarray import DataArrayReader

    if not isinstance(da, xr.DataArray):
        raise RasterInputError(
            f"expected an xarray DataArray of (band, y, x), got {type(da).__name__}"
        )
    name = str(da.encoding.get("source") or da.name or "<DataArray>")
    info = DataArrayReader(da, name=name).info
    reader = DataArrayReader(da, select_bands(info, meta.input.band_names, bands), name=name)
    warn_differences(reader.info, meta)
    return reader


def warn_differences(info: RasterInfo, meta: BundleMeta) -> None:
    """Warn where a raster differs from the model's training raster (dtype, georeferencing)."""
    want = meta.input
    if info.dtype != want.dtype:
        warnings.warn(
            f"{info.path}: dtype is {info.dtype}, the model was trained on {want.dtype}",
            RasterMismatchWarning,
            stacklevel=3,
        )
    if info.transform.is_identity:
        warnings.warn(
            f"{info.path}: no geotransform (GCPs or RPCs are not used); the map will be in "
            "pixel coordinates",
            RasterMismatchWarning,
            stacklevel=3,
        )
    elif not info.crs:
        warnings.warn(
            f"{info.path}: no CRS; the map will have none and its area per class is unknown",
            RasterMismatchWarning,
            stacklevel=3,
        )
    elif want.pixel_size and not np.allclose(info.res, want.pixel_size, rtol=1e-3):
        warnings.warn(
            f"{info.path}: pixel size is {info.res[0]:g} x {info.res[1]:g}, the "
            f"model was trained on {want.pixel_size[0]:g} x {want.pixel_size[1]:g}",
            RasterMismatchWarning,
            stacklevel=3,
        )
