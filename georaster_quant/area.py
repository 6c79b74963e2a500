"""Ground area of raster pixels in square metres, for the run summary's area per class.

A projected CRS gives planar area: the pixel's parallelogram (the geotransform's determinant)
in the CRS's linear unit, converted to metres. A geographic CRS gives ellipsoidal area: the
pixel's size in degrees times the ellipsoid's area element ``M N cos(lat)`` at the pixel's
latitude (exact to the second order in the pixel size, so far below a part per million for
pixels of a few arc-seconds). Without a CRS the area is unknown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine


@dataclass(frozen=True)
class PixelArea:
    """How to turn pixel counts into square metres on one raster grid.

    Args:
        transform: The raster's geotransform (pixel to CRS coordinates).
        kind: ``"planar"``, ``"ellipsoidal"`` or ``"unknown"`` (no CRS).
        planar_m2: Square metres per pixel of a projected grid.
        semi_major: Ellipsoid semi-major axis in metres (geographic grids).
        e2: Ellipsoid eccentricity squared (geographic grids).
    """

    transform: Affine
    kind: str
    planar_m2: float = math.nan
    semi_major: float = math.nan
    e2: float = math.nan

    @classmethod
    def of(cls, transform: Affine, crs: str | None) -> PixelArea:
        """The area rule for a grid with ``transform`` in ``crs`` (a CRS string or None)."""
        if not crs:
            return cls(transform, "unknown")
        from pyproj import CRS  # rioxarray's dependency; only the run summary needs it

        c = CRS.from_user_input(crs)
        det = abs(transform.determinant)
        if c.is_geographic:
            ell = c.ellipsoid
            f = 1 / ell.inverse_flattening if ell.inverse_flattening else 0.0
            return cls(transform, "ellipsoidal", semi_major=ell.semi_major_metre, e2=f * (2 - f))
        units = c.axis_info[0].unit_conversion_factor if c.axis_info else 1.0
        return cls(transform, "planar", planar_m2=det * units * units)

    @property
    def known(self) -> bool:
        """Whether areas can be given in square metres."""
        return self.kind != "unknown"

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Square metres of one pixel at fractional pixel positions ``(rows, cols)``."""
        rows, cols = np.broadcast_arrays(np.asarray(rows, float), np.asarray(cols, float))
        if self.kind == "planar":
            return np.full(rows.shape, self.planar_m2)
        if self.kind == "unknown":
            return np.full(rows.shape, math.nan)
        t = self.transform
        lat = np.radians(np.clip(t.d * cols + t.e * rows + t.f, -90.0, 90.0))
        s2 = np.sin(lat) ** 2
        w = 1 - self.e2 * s2
        meridian = self.semi_major * (1 - self.e2) / w**1.5  # M: north-south radius of curvature
        normal = self.semi_major / np.sqrt(w)  # N: east-west radius of curvature
        return abs(t.determinant) * math.radians(1) ** 2 * meridian * normal * np.cos(lat)
