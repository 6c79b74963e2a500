"""Synthetic multispectral scenes with land-cover labels: the built-in data.

Every pixel is a pure function of ``(seed, row, col)`` built from integer hashes and lattice
value noise on global coordinates, so a scene can be rendered window by window in bounded
memory and the pixels do not depend on the window size. The scene mimics Sentinel-2 L2A
reflectance (uint16, scale 10000): six land-cover classes as coherent patches, fixed spectral
signatures with per-patch and within-patch variability, class-specific texture (crop rows,
high-frequency built-up blocks, tree crowns), an illumination gradient, haze, clouds with
their shadows, sensor noise and, for some seeds, a nodata swath edge.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from georaster_quant.errors import ConfigError
from georaster_quant.io import check_output_path, ensure_folder, write_raster
from georaster_quant.tiling import Window

#: Land-cover classes: (name, RGB colour), in label order.
CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("water", (30, 90, 200)),
    ("forest", (20, 110, 40)),
    ("grassland", (150, 210, 90)),
    ("cropland", (235, 200, 60)),
    ("built_up", (200, 40, 40)),
    ("bare_soil", (170, 130, 90)),
)
LABEL_NODATA = 255
SCENE_NODATA = 0
REFLECTANCE_SCALE = 10000
PIXEL_SIZE = 10.0
CRS = "EPSG:32633"

#: Sentinel-2 bands: (name, centre wavelength in nm), in wavelength order.
S2_BANDS: tuple[tuple[str, int], ...] = (
    ("coastal", 443),
    ("blue", 490),
    ("green", 560),
    ("red", 665),
    ("rededge1", 705),
    ("rededge2", 740),
    ("rededge3", 783),
    ("nir", 842),
    ("nir08", 865),
    ("water_vapour", 945),
    ("cirrus", 1375),
    ("swir1", 1610),
    ("swir2", 2190),
)
#: Which bands a scene with N bands gets: the first N of this list, then sorted by wavelength.
_BAND_PRIORITY = (
    "blue",
    "green",
    "red",
    "nir",
    "swir1",
    "swir2",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir08",
    "coastal",
    "water_vapour",
    "cirrus",
)

# Endmember reflectance spectra, one value per band of S2_BANDS (fixed for every seed).
_SPECTRA = {
    "water": (
        0.060,
        0.055,
        0.048,
        0.030,
        0.025,
        0.020,
        0.018,
        0.015,
        0.014,
        0.010,
        0.002,
        0.008,
        0.005,
    ),
    "forest": (
        0.030,
        0.032,
        0.058,
        0.032,
        0.085,
        0.220,
        0.280,
        0.300,
        0.310,
        0.100,
        0.005,
        0.150,
        0.070,
    ),
    "grass": (
        0.050,
        0.052,
        0.092,
        0.070,
        0.140,
        0.250,
        0.300,
        0.320,
        0.330,
        0.120,
        0.006,
        0.240,
        0.140,
    ),
    "crop": (
        0.038,
        0.040,
        0.085,
        0.042,
        0.130,
        0.300,
        0.370,
        0.400,
        0.410,
        0.140,
        0.006,
        0.220,
        0.110,
    ),
    "soil": (
        0.085,
        0.095,
        0.125,
        0.165,
        0.185,
        0.205,
        0.225,
        0.240,
        0.250,
        0.130,
        0.008,
        0.320,
        0.260,
    ),
    "concrete": (
        0.160,
        0.170,
        0.180,
        0.190,
        0.195,
        0.200,
        0.205,
        0.210,
        0.212,
        0.150,
        0.010,
        0.230,
        0.210,
    ),
    "tile_roof": (
        0.070,
        0.075,
        0.100,
        0.190,
        0.210,
        0.225,
        0.235,
        0.245,
        0.250,
        0.140,
        0.008,
        0.300,
        0.250,
    ),
    "asphalt": (
        0.065,
        0.068,
        0.072,
        0.078,
        0.080,
        0.082,
        0.085,
        0.088,
        0.090,
        0.070,
        0.004,
        0.100,
        0.095,
    ),
    "cloud": (
        0.520,
        0.500,
        0.480,
        0.470,
        0.470,
        0.465,
        0.460,
        0.455,
        0.450,
        0.300,
        0.080,
        0.350,
        0.250,
    ),
}
#: Class probabilities of a patch.
_CLASS_WEIGHTS = np.array([0.12, 0.20, 0.18, 0.20, 0.14, 0.16])
_PATCH_SIZE = 192.0  # mean spacing of patch centres, pixels
_ROW_ANGLES = tuple((math.cos(a), math.sin(a)) for a in np.linspace(0, math.pi, 12, endpoint=False))

_U64 = np.uint64


def band_names(count: int) -> list[str]:
    """Names of the bands of a ``count``-band scene, in wavelength order."""
    if not 3 <= count <= len(S2_BANDS):
        raise ConfigError(f"--bands must be between 3 and {len(S2_BANDS)}, got {count}")
    chosen = set(_BAND_PRIORITY[:count])
    return [name for name, _ in S2_BANDS if name in chosen]


# --------------------------------------------------------------------------- noise primitives


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a bijective, well-mixed uint64 hash (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z ^ (z >> _U64(30))
        z = z * _U64(0xBF58476D1CE4E5B9)
        z = z ^ (z >> _U64(27))
        z = z * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _hash(seed: int, salt: int, *coords: np.ndarray) -> np.ndarray:
    """Hash integer coordinate arrays (broadcast together) with a seed and a salt."""
    z = _mix(np.asarray((seed * 0x9E3779B1 + salt * 0x85EBCA77) & 0xFFFFFFFFFFFFFFFF, dtype=_U64))
    for c in coords:
        z = _mix(z ^ (np.asarray(c).astype(np.int64).view(_U64) * _U64(0x9E3779B97F4A7C15)))
    return z


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from a uint64 hash."""
    return (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _value_noise(ys: np.ndarray, xs: np.ndarray, scale: float, seed: int, salt: int) -> np.ndarray:
    """Smooth lattice noise in [0, 1] at global row/col coordinates ``ys`` x ``xs``."""
    fy, fx = ys / scale, xs / scale
    iy, ix = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    ty, tx = _smooth(fy - iy), _smooth(fx - ix)
    ly = np.arange(iy.min(), iy.max() + 2)
    lx = np.arange(ix.min(), ix.max() + 2)
    lattice = _unit(_hash(seed, salt, ly[:, None], lx[None, :]))
    cx = ix - lx[0]
    along_x = lattice[:, cx] * (1.0 - tx) + lattice[:, cx + 1] * tx  # (len(ly), w)
    cy = iy - ly[0]
    return along_x[cy] * (1.0 - ty)[:, None] + along_x[cy + 1] * ty[:, None]


def _fbm(
    ys: np.ndarray, xs: np.ndarray, scale: float, octaves: int, seed: int, salt: int
) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1]."""
    total = np.zeros((ys.size, xs.size))
    amp, norm = 1.0, 0.0
    for k in range(octaves):
        total += amp * _value_noise(ys, xs, scale / 2**k, seed, salt + 101 * k)
        norm += amp
        amp *= 0.5
    return total / norm


def _gauss(seed: int, salt: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Per-pixel approximately standard normal noise (Irwin-Hall of four 16-bit uniforms)."""
    h = _hash(seed, salt, ys[:, None], xs[None, :])
    total = np.zeros(h.shape)
    for shift in (0, 16, 32, 48):
        total += ((h >> _U64(shift)) & _U64(0xFFFF)).astype(np.float64)
    return (total / 65536.0 - 2.0) * math.sqrt(3.0)


# --------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines a synthetic scene."""

    width: int = 2048
    height: int = 2048
    bands: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        band_names(self.bands)
        if self.width < 1 or self.height < 1:
            raise ConfigError(f"scene size must be positive, got {self.width}x{self.height}")

    @property
    def transform(self) -> Affine:
        """A UTM 33N grid of 10 m pixels."""
        return Affine(PIXEL_SIZE, 0.0, 500000.0, 0.0, -PIXEL_SIZE, 5000000.0 + 10.0 * self.seed)


class SceneRenderer:
    """Renders windows of one scene; pure and thread-safe."""

    def __init__(self, spec: SceneSpec):
        self.spec = spec
        names = band_names(spec.bands)
        index = [i for i, (n, _) in enumerate(S2_BANDS) if n in names]
        self.band_names = names
        self._spectra = {k: np.array(v)[index] for k, v in _SPECTRA.items()}
        wavelengths = np.array([S2_BANDS[i][1] for i in index], dtype=np.float64)
        self._haze_weight = (490.0 / wavelengths) ** 2
        rng = np.random.default_rng(spec.seed)
        angle = rng.uniform(0, 2 * math.pi)
        self._light = (math.cos(angle), math.sin(angle), rng.uniform(0.08, 0.16))
        self._haze_amp = rng.uniform(0.01, 0.035)
        self._cloud_threshold = rng.uniform(0.68, 0.74)  # 2-7 % cloud cover
        self._shadow_offset = (int(rng.integers(15, 40)), int(rng.integers(-40, 40)))
        # For about half the seeds, a straight swath edge cuts off one corner as nodata.
        self._edge: tuple[float, float, float] | None = None
        if rng.uniform() < 0.5:
            corner = rng.integers(4)
            ny, nx = (1.0 if corner & 1 else -1.0), (1.0 if corner & 2 else -1.0)
            frac = rng.uniform(0.1, 0.25)
            cy = spec.height if ny > 0 else 0
            cx = spec.width if nx > 0 else 0
            reach = frac * (spec.height + spec.width) / 2.0
            self._edge = (ny, nx, ny * cy + nx * cx - reach)

    def render(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Scene (uint16, bands x h x w) and labels (uint8, h x w) of a window."""
        seed = self.spec.seed
        ys = np.arange(window.row_off, window.row_end, dtype=np.float64)
        xs = np.arange(window.col_off, window.col_end, dtype=np.float64)
        site_y, site_x, cls = self._sites(ys, xs)
        labels = cls.astype(np.uint8)
        refl = self._surface(ys, xs, site_y, site_x, cls)

        # Illumination gradient across the scene and haze, then clouds with shadows.
        gy = ys[:, None] / max(self.spec.height, 1) - 0.5
        gx = xs[None, :] / max(self.spec.width, 1) - 0.5
        cos_a, sin_a, amp = self._light
        refl *= 1.0 + amp * (cos_a * gx + sin_a * gy)
        haze = self._haze_amp * _fbm(ys, xs, 700.0, 2, seed, 500)
        refl += haze * self._haze_weight[:, None, None]
        dy, dx = self._shadow_offset
        shadow = self._cloud(ys - dy, xs - dx)
        refl *= 1.0 - 0.55 * shadow
        cloud = self._cloud(ys, xs)
        cloud_tex = 0.85 + 0.3 * _value_noise(ys, xs, 6.0, seed, 510)
        refl = refl * (1.0 - cloud) + cloud * cloud_tex * self._spectra["cloud"][:, None, None]

        # Sensor noise: a floor plus a part proportional to the signal.
        for b in range(refl.shape[0]):
            refl[b] += (0.002 + 0.015 * refl[b]) * _gauss(seed, 600 + b, ys, xs)
        dn = np.clip(np.rint(refl * REFLECTANCE_SCALE), 1, 65535).astype(np.uint16)

        if self._edge is not None:
            ny, nx, c = self._edge
            off = (ny * ys[:, None] + nx * xs[None, :]) > c
            dn[:, off] = SCENE_NODATA
            labels[off] = LABEL_NODATA
        return dn, labels

    def _sites(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Warped Voronoi patches: each pixel's site lattice cell and its class."""
        seed, size = self.spec.seed, _PATCH_SIZE
        wy = ys[:, None] + size * 0.6 * (_fbm(ys, xs, size * 0.8, 3, seed, 10) - 0.5)
        wx = xs[None, :] + size * 0.6 * (_fbm(ys, xs, size * 0.8, 3, seed, 20) - 0.5)
        cy, cx = np.floor(wy / size).astype(np.int64), np.floor(wx / size).astype(np.int64)
        ly = np.arange(cy.min() - 1, cy.max() + 2)
        lx = np.arange(cx.min() - 1, cx.max() + 2)
        jy = (ly[:, None] + 0.1 + 0.8 * _unit(_hash(seed, 30, ly[:, None], lx[None, :]))) * size
        jx = (lx[None, :] + 0.1 + 0.8 * _unit(_hash(seed, 40, ly[:, None], lx[None, :]))) * size
        best = np.full(wy.shape, np.inf)
        best_y = np.zeros(wy.shape, dtype=np.int64)
        best_x = np.zeros(wy.shape, dtype=np.int64)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                qy, qx = cy + dy - ly[0], cx + dx - lx[0]
                d = (jy[qy, qx] - wy) ** 2 + (jx[qy, qx] - wx) ** 2
                closer = d < best
                best = np.where(closer, d, best)
                best_y = np.where(closer, qy + ly[0], best_y)
                best_x = np.where(closer, qx + lx[0], best_x)
        u = _unit(_hash(seed, 50, best_y, best_x))
        cls = np.searchsorted(np.cumsum(_CLASS_WEIGHTS) / _CLASS_WEIGHTS.sum(), u, side="right")
        return best_y, best_x, np.minimum(cls, len(CLASSES) - 1)

    def _surface(
        self,
        ys: np.ndarray,
        xs: np.ndarray,
        site_y: np.ndarray,
        site_x: np.ndarray,
        cls: np.ndarray,
    ) -> np.ndarray:
        """Ground reflectance with class spectra, per-patch variability and class texture."""
        seed, sp = self.spec.seed, self._spectra
        nb = len(self.band_names)
        h, w = cls.shape
        out = np.zeros((nb, h, w))

        def put(mask: np.ndarray, refl: np.ndarray) -> None:
            out[:, mask] = refl if refl.ndim == 2 else refl[:, None]

        def patch_u(salt: int) -> np.ndarray:
            return _unit(_hash(seed, salt, site_y, site_x))

        # Per-patch brightness and spectral tilt (within-class variability).
        bright = 0.85 + 0.3 * patch_u(60)
        tilt = 0.9 + 0.2 * patch_u(61)
        ramp = np.linspace(-1.0, 1.0, nb)[:, None, None]
        patch = bright[None] * (1.0 + (tilt[None] - 1.0) * ramp)
        low = _fbm(ys, xs, 48.0, 2, seed, 70)  # gentle within-patch variation
        fine = _value_noise(ys, xs, 2.5, seed, 71)

        m = cls == 0  # water: smooth and dark
        if m.any():
            put(m, sp["water"][:, None] * (0.9 + 0.2 * low[m]))
        m = cls == 1  # forest: tree crowns and gaps at a 3-4 px scale
        if m.any():
            crowns = _value_noise(ys, xs, 3.5, seed, 80)[m]
            lit = np.clip((crowns - 0.3) / 0.4, 0.0, 1.0)
            put(m, sp["forest"][:, None] * (0.55 + 0.65 * lit))
        m = cls == 2  # grassland: smooth, a touch of soil in places
        if m.any():
            soil_frac = 0.25 * low[m]
            put(m, sp["grass"][:, None] * (1 - soil_frac) + sp["soil"][:, None] * soil_frac)
        m = cls == 3  # cropland: rows of crop and soil with a per-field direction and period
        if m.any():
            k = (patch_u(90)[m] * len(_ROW_ANGLES)).astype(np.int64)
            cos_t = np.array([c for c, _ in _ROW_ANGLES])[k]
            sin_t = np.array([s for _, s in _ROW_ANGLES])[k]
            period = 4.0 + 4.0 * patch_u(91)[m]
            yy, xx = np.broadcast_arrays(ys[:, None], xs[None, :])
            phase = (xx[m] * cos_t + yy[m] * sin_t) / period
            tri = np.abs(phase - np.floor(phase) - 0.5) * 2.0
            cover = 0.35 + 0.45 * patch_u(92)[m]
            crop = np.clip((tri - (1 - cover)) / 0.25 + 0.5, 0.0, 1.0)
            put(m, sp["crop"][:, None] * crop + sp["soil"][:, None] * (1 - crop))
        m = cls == 4  # built-up: a street grid with roofs of several materials, shadows, gardens
        if m.any():
            yi, xi = np.broadcast_arrays(ys[:, None].astype(np.int64), xs[None, :].astype(np.int64))
            yi, xi = yi[m], xi[m]
            street = ((yi % 11) < 2) | ((xi % 13) < 2)
            kind = _unit(_hash(seed, 100, yi // 11, xi // 13))
            inner_y, inner_x = yi % 11, xi % 13
            shade = (inner_y == 2) | (inner_x == 2)
            mats = np.stack(
                [sp["concrete"], sp["tile_roof"], sp["asphalt"], sp["grass"], sp["soil"]], axis=1
            )
            choice = np.searchsorted([0.35, 0.65, 0.75, 0.92], kind, side="right")
            refl = mats[:, choice]
            refl = np.where(street[None], sp["asphalt"][:, None], refl)
            refl = refl * np.where(shade, 0.5, 1.0)[None]
            put(m, refl * (0.9 + 0.2 * fine[m]))
        m = cls == 5  # bare soil: smooth with darker moist spots
        if m.any():
            moist = np.clip((_value_noise(ys, xs, 24.0, seed, 110)[m] - 0.6) / 0.3, 0.0, 1.0)
            put(m, sp["soil"][:, None] * (1.0 - 0.35 * moist) * (0.92 + 0.16 * low[m]))
        return out * patch

    def _cloud(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Cloud opacity in [0, 1]."""
        n = _fbm(ys, xs, 220.0, 4, self.spec.seed, 300)
        return np.clip((n - self._cloud_threshold) / 0.08, 0.0, 1.0)


def iter_windows(width: int, height: int, chunk: int) -> Iterator[Window]:
    """Block-aligned windows of at most ``chunk x chunk`` in row-major order."""
    for r in range(0, height, chunk):
        for c in range(0, width, chunk):
            yield Window(r, c, min(chunk, height - r), min(chunk, width - c))


def generate_scene(
    out_dir: str | os.PathLike[str],
    spec: SceneSpec,
    *,
    cog: bool = False,
    chunk: int = 512,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``scene.tif`` and ``labels.tif`` for ``spec`` into ``out_dir``.

    Windows of ``chunk`` pixels are rendered by ``workers`` threads and written in order, so
    memory stays bounded by a few windows whatever the scene size.
    """
    if chunk < 16 or chunk % 16:
        raise ConfigError(f"chunk must be a positive multiple of 16, got {chunk}")
    new = not Path(out_dir).exists()
    out = ensure_folder(out_dir)
    try:
        return _write_scene(out, spec, cog=cog, chunk=chunk, workers=workers,
                            overwrite=overwrite, progress=progress)  # fmt: skip
    except BaseException:
        if new and not any(out.iterdir()):  # a failed or stopped run leaves no empty folder
            out.rmdir()
        raise


def _write_scene(
    out: Path, spec: SceneSpec, *, cog: bool, chunk: int, workers: int, overwrite: bool,
    progress: bool,
) -> tuple[Path, Path]:  # fmt: skip
    scene_path, labels_path = out / "scene.tif", out / "labels.tif"
    for p in (scene_path, labels_path):
        check_output_path(p, overwrite=overwrite)
    renderer = SceneRenderer(spec)
    common = dict(width=spec.width, height=spec.height, crs=CRS, transform=spec.transform, cog=cog)
    windows = list(iter_windows(spec.width, spec.height, chunk))
    from georaster_quant.progress import progress_bar

    with (
        write_raster(
            scene_path, count=spec.bands, dtype="uint16", nodata=SCENE_NODATA, **common
        ) as scene,
        write_raster(
            labels_path,
            count=1,
            dtype="uint8",
            nodata=LABEL_NODATA,
            overview_resampling="mode",
            **common,
        ) as labels,
        ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        scene.set_band_names(renderer.band_names)
        scene.update_tags(
            REFLECTANCE_SCALE=REFLECTANCE_SCALE, SYNTH_SEED=spec.seed, GENERATOR="georaster_quant"
        )
        for b in range(1, spec.bands + 1):
            scene.update_tags(b, WAVELENGTH_NM=dict(S2_BANDS)[renderer.band_names[b - 1]])
        labels.set_band_names(["class"])
        labels.update_tags(CLASSES=",".join(name for name, _ in CLASSES), SYNTH_SEED=spec.seed)
        labels.write_colormap(1, {i: rgb for i, (_, rgb) in enumerate(CLASSES)})
        bar = progress_bar(
            total=spec.width * spec.height,
            unit="px",
            unit_scale=True,
            enabled=progress,
            desc="synth",
        )
        # Keep at most 2 x workers windows in flight so memory does not grow with the scene.
        inflight = 2 * max(1, workers)
        futures = []
        for i, window in enumerate(windows):
            futures.append((window, pool.submit(renderer.render, window)))
            if len(futures) >= inflight or i == len(windows) - 1:
                while futures and (len(futures) >= inflight or i == len(windows) - 1):
                    win, fut = futures.pop(0)
                    dn, lab = fut.result()
                    scene[win] = dn
                    labels[win] = lab
                    bar.update(win.width * win.height)
        bar.close()
    return scene_path, labels_path
