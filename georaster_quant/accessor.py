"""The ``.gq`` accessor on xarray DataArrays: ``da.gq.predict(bundle)``.

Importing this module registers it, as importing ``rioxarray`` registers ``.rio``::

    import rioxarray
    import georaster_quant.accessor  # noqa: F401

    scene = rioxarray.open_rasterio("scene.tif", chunks=2048)
    classes = scene.gq.predict("runs/best")["class"]
"""

from __future__ import annotations

import os
from typing import Any

import xarray as xr

from georaster_quant.lazy import predict_dataarray


@xr.register_dataarray_accessor("gq")
class GeoRasterQuantAccessor:
    """georaster_quant methods on a ``(band, y, x)`` DataArray."""

    def __init__(self, da: xr.DataArray):
        self._da = da

    def predict(self, weights: str | os.PathLike[str], **options: Any) -> xr.Dataset:
        """Classify lazily; see :func:`georaster_quant.lazy.predict_dataarray` for options."""
        return predict_dataarray(self._da, weights, **options)
