"""A reader over an xarray/rioxarray DataArray, with the same interface as ``RasterReader``.

It lets the tiler, the stream and the predictors work on a ``(band, y, x)`` DataArray that is
already in memory or lazily backed by dask (e.g. from ``rioxarray.open_rasterio(...,
chunks=True)``): each ``read`` computes only the window it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine

from georaster_quant.errors import BandMismatchError, RasterInputError
from georaster_quant.io import RasterInfo, to_physical, validity
from georaster_quant.tiling import Window, mirror_take, source_window


def _band_names(da: Any) -> tuple[str | None, ...]:
    names = da.attrs.get("long_name")
    if isinstance(names, str):
        names = (names,)
    if names is not None and len(names) == da.sizes["band"]:
        return tuple(str(n) if n else None for n in names)
    coords = da["band"].values if "band" in da.coords else []
    if len(coords) and all(isinstance(v, str) for v in coords.tolist()):
        return tuple(coords.tolist())
    return (None,) * da.sizes["band"]


class DataArrayReader:
    """Windowed reads of a ``(band, y, x)`` DataArray as ``(data, valid)``.

    Nodata comes from ``da.rio.nodata`` (or ``_FillValue``), scale/offset from the
    ``scale_factor``/``add_offset`` attributes, the transform and CRS from ``da.rio``.
    ``bands`` selects 1-based positions along the band dimension.
    """

    def __init__(self, da: Any, bands: Sequence[int] | None = None, name: str = "<DataArray>"):
        import rioxarray  # noqa: F401 - registers the .rio accessor

        if set(da.dims) == {"y", "x"}:
            da = da.expand_dims("band")
        if set(da.dims) != {"band", "y", "x"}:
            raise RasterInputError(f"{name}: expected dims (band, y, x), got {da.dims}")
        da = da.transpose("band", "y", "x")
        count = da.sizes["band"]
        if bands is None:
            bands = list(range(1, count + 1))
        bad = [b for b in bands if not 1 <= b <= count]
        if bad:
            raise BandMismatchError(f"{name}: band(s) {bad} do not exist (1..{count})")
        nodata = da.rio.nodata if da.rio.nodata is not None else da.attrs.get("_FillValue")
        scale = np.asarray(da.attrs.get("scale_factor", 1.0), dtype=np.float64)
        offset = np.asarray(da.attrs.get("add_offset", 0.0), dtype=np.float64)
        self.scale_offset = (
            None
            if np.all(scale == 1) and np.all(offset == 0)
            else (np.broadcast_to(scale, len(bands)), np.broadcast_to(offset, len(bands)))
        )
        self._da = da
        self._index = [b - 1 for b in bands]
        chunks = da.chunks
        block = (chunks[1][0], chunks[2][0]) if chunks else (min(256, da.sizes["y"]), da.sizes["x"])
        try:
            transform = da.rio.transform()
        except Exception:  # noqa: BLE001 - no georeferencing is allowed for plain arrays
            transform = Affine.identity()
        crs = da.rio.crs
        names = _band_names(da)
        self.info = RasterInfo(
            path=name,
            width=da.sizes["x"],
            height=da.sizes["y"],
            bands=tuple(bands),
            band_names=tuple(names[i] for i in self._index),
            dtype=str(da.dtype),
            nodata=None if nodata is None else float(nodata),
            crs=crs.to_string() if crs else None,
            transform=transform,
            block_shape=(int(block[0]), int(block[1])),
            has_alpha=False,
            has_mask=False,
            scaled=self.scale_offset is not None,
        )

    @property
    def data(self) -> Any:
        """The selected bands as a ``(band, y, x)`` DataArray (lazy if the input is)."""
        return self._da.isel(band=self._index)

    def __enter__(self) -> DataArrayReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close: the DataArray belongs to the caller."""

    def read_raw(
        self, inside: Window, out: np.ndarray | None = None, valid_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw values and validity of a window inside the array (computes only that window).

        ``out`` and ``valid_out``, if given, receive the values and the validity.
        """
        rows, cols = inside.toslices()
        raw = np.asarray(self._da.isel(band=self._index, y=rows, x=cols).values)
        if out is not None:
            out[...] = raw
            raw = out
        return raw, validity(raw, self.info.nodata, out=valid_out)

    def to_physical(self, raw: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """Raw values to float32 physical values (``scale_factor``/``add_offset`` applied)."""
        return to_physical(raw, self.scale_offset, channels_last)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Compute ``window`` as ``(data, valid)``; parts outside the array are mirrored."""
        info = self.info
        src = source_window(window, info.height, info.width)
        raw, valid = self.read_raw(src)
        return (
            mirror_take(self.to_physical(raw), src, window, info.height, info.width),
            mirror_take(valid, src, window, info.height, info.width),
        )
