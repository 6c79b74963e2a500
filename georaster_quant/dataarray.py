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


def _per_band(da: Any, values: Any) -> list[Any] | None:
    """A per-band attribute (one value per band of the file) for the array's current bands.

    xarray keeps attributes as they were when a selection such as ``da.isel(band=[3, 2, 1,
    0])`` reorders the bands, but keeps the file's 1-based band numbers as the ``band``
    coordinate (as rioxarray writes it): values are taken by that number when it indexes
    them, else by position when there is one per band. ``None`` if neither fits.
    """
    if values is None:
        return None
    values = [values] if isinstance(values, str) or np.ndim(values) == 0 else list(values)
    numbers = da["band"].values.tolist() if "band" in da.coords else []
    whole = all(
        isinstance(n, int | float) and not isinstance(n, bool) and float(n).is_integer()
        for n in numbers
    )
    if (
        numbers
        and whole
        and len(set(numbers)) == len(numbers)  # (concatenated single bands repeat theirs)
        and all(1 <= n <= len(values) for n in numbers)
    ):
        return [values[int(n) - 1] for n in numbers]
    return values if len(values) == da.sizes["band"] else None


def _band_names(da: Any) -> tuple[str | None, ...]:
    """Band descriptions (``long_name``), else string band coordinates, else none."""
    names = _per_band(da, da.attrs.get("long_name"))
    if names is not None:
        return tuple(str(n) if n else None for n in names)
    coords = da["band"].values if "band" in da.coords else []
    if len(coords) and all(isinstance(v, str) for v in coords.tolist()):
        return tuple(coords.tolist())
    return (None,) * da.sizes["band"]


def _scale_offset(da: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-band GDAL scale and offset of the array's current bands (ones and zeros if unset).

    rioxarray keeps them as ``scale_factor``/``add_offset`` when every band has the same and
    as ``scales``/``offsets`` when they differ.
    """
    pairs = (("scale_factor", "scales", 1.0), ("add_offset", "offsets", 0.0))
    out = []
    for one, many, default in pairs:
        raw = da.attrs.get(one, da.attrs.get(many, default))
        values = [raw] * da.sizes["band"] if np.ndim(raw) == 0 else _per_band(da, raw)
        if values is None:
            raise RasterInputError(f"{name}: {len(raw)} {many} values for {da.sizes['band']} bands")
        out.append(np.asarray(values, dtype=np.float64))
    return out[0], out[1]


class DataArrayReader:
    """Windowed reads of a ``(band, y, x)`` DataArray as ``(data, valid)``.

    Nodata comes from ``da.rio.nodata`` (or ``_FillValue``), scale/offset from the
    ``scale_factor``/``add_offset`` (or per-band ``scales``/``offsets``) attributes, the
    transform (computed from the coordinates, so slices with a step and flips are right) and
    CRS from ``da.rio``. ``bands`` selects 1-based positions along the band dimension.
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
        self._index = [b - 1 for b in bands]
        scale, offset = _scale_offset(da, name)
        self.scale_offset = (
            None
            if np.all(scale == 1) and np.all(offset == 0)
            else (scale[self._index], offset[self._index])
        )
        self._da = da
        chunks = da.chunks
        block = (
            (max(chunks[1]), max(chunks[2])) if chunks else (min(256, da.sizes["y"]), da.sizes["x"])
        )
        try:
            transform = da.rio.transform(recalc=True)
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
