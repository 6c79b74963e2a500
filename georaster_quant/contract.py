"""Opening a raster for a model: bands mapped onto the bundle's input contract, differences said."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from georaster_quant.bundle import BundleMeta
from georaster_quant.errors import RasterMismatchWarning
from georaster_quant.io import RasterReader, read_info, select_bands


def open_input(
    path: str | os.PathLike[str], meta: BundleMeta, bands: Sequence[int] | None = None
) -> RasterReader:
    """Open ``path`` with its bands mapped onto the model's input bands.

    A band-count mismatch is an error before any pixel is read; a different dtype or pixel
    size, or a raster without a CRS or geotransform, is a warning that says what differs.
    """
    info = read_info(path)
    chosen = select_bands(info, meta.input.band_names, bands)
    reader = RasterReader(path, bands=chosen)
    want = meta.input
    if reader.info.dtype != want.dtype:
        warnings.warn(
            f"{info.path}: dtype is {reader.info.dtype}, the model was trained on {want.dtype}",
            RasterMismatchWarning,
            stacklevel=2,
        )
    if reader.info.transform.is_identity:
        warnings.warn(
            f"{info.path}: no geotransform (GCPs or RPCs are not used); the map will be in "
            "pixel coordinates",
            RasterMismatchWarning,
            stacklevel=2,
        )
    elif not reader.info.crs:
        warnings.warn(
            f"{info.path}: no CRS; the map will have none and its area per class is unknown",
            RasterMismatchWarning,
            stacklevel=2,
        )
    elif want.pixel_size and not np.allclose(reader.info.res, want.pixel_size, rtol=1e-3):
        warnings.warn(
            f"{info.path}: pixel size is {reader.info.res[0]:g} x {reader.info.res[1]:g}, the "
            f"model was trained on {want.pixel_size[0]:g} x {want.pixel_size[1]:g}",
            RasterMismatchWarning,
            stacklevel=2,
        )
    return reader
