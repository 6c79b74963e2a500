"""Ground area of raster pixels in square metres, for the run summary's area per class.

The area of a pixel is its size in latitude and longitude times the ellipsoid's area element
``M N cos(lat)`` at its position (exact to the second order in the pixel size: parts per
billion for pixels of metres or arc-seconds). In a geographic CRS the size comes from the
geotransform (in the CRS's angular unit); in a projected CRS from PROJ's transformation of the
pixel's edges to the CRS's own latitude and longitude, so it is ground area whatever the
projection's distortion (4x the planar area at 60 degrees in Web Mercator, 0.9992-1.0015 of it
across a UTM zone). Without a CRS or a geotransform the area is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine


@dataclass(frozen=True)
class PixelArea:
    """How to turn pixel counts into square metres on one raster grid.

    Use :meth:`of`; :attr:`kind` is ``"ellipsoidal"`` (geographic CRS), ``"projected"`` or
    ``"unknown"``.
    """

    transform: Affine
    kind: str
    semi_major: float = math.nan
    e2: float = math.nan
    unit: float = 1.0  # radians per angular unit (of the CRS, or of its lon/lat)
    to_lonlat: Any = None  # a projected CRS's pyproj Transformer to its own lon/lat

    @classmethod
    def of(cls, transform: Affine, crs: str | None) -> PixelArea:
        """The area rule for a grid with ``transform`` in ``crs`` (a CRS string or None)."""
        if not crs or transform.is_identity:
            return cls(transform, "unknown")
        from pyproj import CRS, Transformer  # rioxarray's dependency

        c = CRS.from_user_input(crs)
        ell = c.ellipsoid
        f = 1 / ell.inverse_flattening if ell.inverse_flattening else 0.0
        shape = {"semi_major": ell.semi_major_metre, "e2": f * (2 - f)}
        if c.is_geographic:
            return cls(transform, "ellipsoidal", unit=_radians_per_unit(c), **shape)
        lonlat = c.geodetic_crs
        if lonlat is None:  # an engineering CRS: no ellipsoid to measure on
            return cls(transform, "unknown")
        to_lonlat = Transformer.from_crs(c, lonlat, always_xy=True)
        return cls(
            transform, "projected", unit=_radians_per_unit(lonlat), to_lonlat=to_lonlat, **shape
        )

    @property
    def known(self) -> bool:
        """Whether areas can be given in square metres."""
        return self.kind != "unknown"

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Square metres of one pixel at fractional pixel positions ``(rows, cols)``."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, float), np.asarray(cols, float))
        if self.kind == "unknown":
            return np.full(rows.shape, math.nan)
        t = self.transform
        if self.kind == "ellipsoidal":
            lat = (t.d * cols + t.e * rows + t.f) * self.unit
            size = abs(t.determinant) * self.unit**2  # radians² of longitude x latitude
        else:  # the pixel's two edge vectors, as longitude and latitude differences

            def lonlat(c: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                x, y = t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f
                return self.to_lonlat.transform(x, y)

            lon, lat = lonlat(cols, rows)
            lon_c, lat_c = lonlat(cols + 1, rows)
            lon_r, lat_r = lonlat(cols, rows + 1)
            dlon_c, dlon_r = ((np.asarray(v) - lon + 180) % 360 - 180 for v in (lon_c, lon_r))
            dlat_c, dlat_r = np.asarray(lat_c) - lat, np.asarray(lat_r) - lat
            size = np.abs(dlon_c * dlat_r - dlon_r * dlat_c) * self.unit**2
            lat = np.asarray(lat) * self.unit
        lat = np.clip(lat, -math.pi / 2, math.pi / 2)
        w = 1 - self.e2 * np.sin(lat) ** 2
        meridian = self.semi_major * (1 - self.e2) / w**1.5  # north-south curvature radius
        normal = self.semi_major / np.sqrt(w)  # east-west curvature radius
        return size * meridian * normal * np.cos(lat)


def _radians_per_unit(geographic: Any) -> float:
    """Radians per angular unit of a geographic pyproj CRS (degrees if it does not say)."""
    axes = geographic.axis_info
    return axes[0].unit_conversion_factor if axes else math.radians(1)
