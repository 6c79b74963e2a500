"""Calibration tiles chosen for diversity, and the reader that feeds them to quantizers.

Candidates are the tiles of the prediction grid of one or more rasters. Each gets a few cheap
descriptors (per-band mean and spread after the bundle's normalization, brightness, a
vegetation index, the shares of very bright/cloud-like, very dark/shadow-like and nodata
pixels). In standardized descriptor space a farthest-point (k-centre) choice picks
``num_batches x batch_size`` tiles so that every candidate has a chosen tile nearby; the
largest such distance is the *coverage radius* reported against a random sample of the same
size. The chosen tiles are then read again and served by :class:`CalibrationDataReader`,
which follows ONNX Runtime's ``get_next()``/``rewind()`` interface so the same tiles can
calibrate torch fbgemm and ONNX Runtime alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from georaster_quant.bundle import BundleMeta
from georaster_quant.contract import open_input
from georaster_quant.errors import TrainingDataError
from georaster_quant.stream import iter_row_strips
from georaster_quant.tiling import TileGrid, tiles_from_strip

#: Mean normalized value over the bands above which a pixel is very bright (cloud-like).
BRIGHT = 2.0
#: Mean normalized value over the bands below which a pixel is very dark (shadow-like).
DARK = -0.8
#: A candidate whose nodata share is above this is not used for calibration.
MAX_NODATA = 0.5
#: Candidates kept per raster before the choice (a random subset of the grid beyond this).
MAX_CANDIDATES = 20_000


def _band_index(names: Sequence[str | None], wanted: str) -> int | None:
    lowered = [n.lower() if n else "" for n in names]
    return lowered.index(wanted) if wanted in lowered else None


def tile_descriptors(
    tiles: np.ndarray, valid: np.ndarray, meta: BundleMeta
) -> tuple[np.ndarray, list[str]]:
    """Cheap descriptors of raw tiles ``(N, C, T, T)``: one row per tile, and their names."""
    norm = meta.normalization
    center = np.asarray(norm.center, dtype=np.float32)[None, :, None, None]
    scale = np.asarray(norm.scale, dtype=np.float32)[None, :, None, None]
    z = np.clip((tiles - center) / scale, -norm.clip, norm.clip)
    w = valid[:, None].astype(np.float32)
    count = np.maximum(w.sum(axis=(2, 3)), 1.0)
    mean = (z * w).sum(axis=(2, 3)) / count
    spread = np.sqrt(np.maximum((z * z * w).sum(axis=(2, 3)) / count - mean**2, 0.0))
    band_mean = z.mean(axis=1)
    bright_px = (band_mean > BRIGHT) & valid
    dark_px = (band_mean < DARK) & valid
    n_valid = np.maximum(valid.sum(axis=(1, 2)), 1)
    cols = [mean, spread, mean.mean(axis=1, keepdims=True)]
    names = [f"mean_{i}" for i in range(mean.shape[1])] + [
        f"spread_{i}" for i in range(mean.shape[1])
    ]
    names.append("brightness")
    red = _band_index(meta.input.band_names, "red")
    nir = _band_index(meta.input.band_names, "nir")
    if red is not None and nir is not None:
        r, n = tiles[:, red], tiles[:, nir]
        ndvi = np.where(valid, (n - r) / np.maximum(n + r, 1e-6), 0.0)
        cols.append((ndvi.sum(axis=(1, 2)) / n_valid)[:, None])
        names.append("ndvi")
    cols += [
        (bright_px.sum(axis=(1, 2)) / n_valid)[:, None],
        (dark_px.sum(axis=(1, 2)) / n_valid)[:, None],
        (1.0 - valid.mean(axis=(1, 2)))[:, None],
    ]
    names += ["bright_share", "dark_share", "nodata_share"]
    return np.concatenate(cols, axis=1).astype(np.float64), names


def standardize(descriptors: np.ndarray) -> np.ndarray:
    """Z-score each descriptor column; constant columns become 0."""
    mu = descriptors.mean(axis=0)
    sd = descriptors.std(axis=0)
    return (descriptors - mu) / np.where(sd > 0, sd, 1.0)


def farthest_point(points: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-centre: start nearest the mean, then always add the farthest point."""
    n = len(points)
    if k >= n:
        return np.arange(n)
    first = int(np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1)))
    chosen = [first]
    dist = np.sqrt(((points - points[first]) ** 2).sum(axis=1))
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.sqrt(((points - points[nxt]) ** 2).sum(axis=1)))
    return np.asarray(chosen)


def coverage_radius(points: np.ndarray, chosen: np.ndarray) -> float:
    """Largest distance from any point to its nearest chosen point (lower is better)."""
    best = np.full(len(points), np.inf)
    for i in chosen:
        best = np.minimum(best, np.sqrt(((points - points[i]) ** 2).sum(axis=1)))
    return float(best.max())


@dataclass
class Candidates:
    """Descriptors of candidate tiles and where each one is."""

    descriptors: np.ndarray  # (N, D)
    names: list[str]
    source: np.ndarray  # (N,) index into paths
    rows: np.ndarray  # (N,) grid row
    cols: np.ndarray  # (N,) grid column
    paths: list[str]
    grids: list[TileGrid]


def scan_candidates(
    paths: Sequence[str | os.PathLike[str]],
    meta: BundleMeta,
    *,
    bands: Sequence[int] | None = None,
    stride: int | None = None,
    max_candidates: int = MAX_CANDIDATES,
    seed: int = 0,
) -> Candidates:
    """Describe the grid tiles of every raster in one streaming pass each."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    grids: list[TileGrid] = []
    names: list[str] = []
    for k, path in enumerate(paths):
        with open_input(path, meta, bands) as reader:
            grid = TileGrid(
                reader.info.height,
                reader.info.width,
                meta.input.tile_size,
                stride or meta.input.tile_size,
            )
            grids.append(grid)
            keep = np.ones(grid.shape, dtype=bool)
            if len(grid) > max_candidates:
                keep[:] = False
                keep.flat[rng.choice(len(grid), max_candidates, replace=False)] = True
            for row, raw, valid in iter_row_strips(reader, grid):
                cols = np.flatnonzero(keep[row])
                if cols.size == 0:
                    continue
                tiles = reader.to_physical(tiles_from_strip(raw, grid)[cols])
                vt = tiles_from_strip(valid, grid)[cols]
                d, names = tile_descriptors(tiles, vt, meta)
                parts.append((d, np.full(cols.size, k), np.full(cols.size, row), cols))
    if not parts:
        raise TrainingDataError(f"{paths[0]}: no tiles to calibrate on")
    d, src, rows, cols = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Candidates(d, names, src, rows, cols, [os.fspath(p) for p in paths], grids)


@dataclass
class CalibrationSet:
    """The chosen tiles (raw values, nodata filled) and a report on how they were chosen."""

    tiles: np.ndarray  # (n, C, T, T) float32
    report: dict[str, Any] = field(default_factory=dict)


def choose_calibration_tiles(
    paths: Sequence[str | os.PathLike[str]],
    meta: BundleMeta,
    count: int,
    *,
    bands: Sequence[int] | None = None,
    method: str = "diverse",
    seed: int = 0,
) -> CalibrationSet:
    """Pick ``count`` tiles from ``paths`` (``diverse`` or ``random``) and read them."""
    cands = scan_candidates(paths, meta, bands=bands, seed=seed)
    nodata_col = cands.names.index("nodata_share")
    usable = np.flatnonzero(cands.descriptors[:, nodata_col] <= MAX_NODATA)
    if usable.size == 0:
        raise TrainingDataError(
            f"{cands.paths[0]}: every candidate tile is mostly nodata; nothing to calibrate on"
        )
    points = standardize(cands.descriptors[usable])
    k = min(count, usable.size)
    rng = np.random.default_rng(seed)
    random_pick = rng.choice(usable.size, k, replace=False)
    pick = farthest_point(points, k) if method == "diverse" else random_pick
    chosen = usable[pick]
    tiles = _read_tiles(cands, chosen, meta, bands)

    def share_above(name: str, threshold: float) -> int:
        return int((cands.descriptors[chosen, cands.names.index(name)] > threshold).sum())

    report = {
        "method": method,
        "tiles": int(k),
        "requested": int(count),
        "candidates": int(len(cands.descriptors)),
        "usable_candidates": int(usable.size),
        "sources": {
            os.path.basename(p): int((cands.source[chosen] == i).sum())
            for i, p in enumerate(cands.paths)
        },
        "coverage_radius": coverage_radius(points, pick),
        "random_coverage_radius": coverage_radius(points, random_pick),
        "descriptors": cands.names,
        "bright_tiles": int(
            (cands.descriptors[chosen, cands.names.index("bright_share")] > 0.2).sum()
        ),
        "dark_tiles": int((cands.descriptors[chosen, cands.names.index("dark_share")] > 0.2).sum()),
        "nodata_heavy_tiles": int((cands.descriptors[chosen, nodata_col] > 0.25).sum()),
    }
    return CalibrationSet(tiles, report)


def _read_tiles(
    cands: Candidates, chosen: np.ndarray, meta: BundleMeta, bands: Sequence[int] | None
) -> np.ndarray:
    fill = np.asarray(meta.input.fill_values, dtype=np.float32)[:, None, None]
    out = []
    for k, path in enumerate(cands.paths):
        mine = chosen[cands.source[chosen] == k]
        if mine.size == 0:
            continue
        grid = cands.grids[k]
        with open_input(path, meta, bands) as reader:
            for i in mine:
                data, valid = reader.read(grid.tile(int(cands.rows[i]), int(cands.cols[i])).window)
                out.append(np.where(valid[None], data, fill))
    return np.stack(out).astype(np.float32)


class CalibrationDataReader:
    """Batches of calibration tiles: ``get_next() -> {input_name: batch} | None``, rewindable.

    The interface of ONNX Runtime's calibration data reader; iterating yields the arrays.
    """

    def __init__(self, tiles: np.ndarray, batch_size: int = 32, input_name: str = "input"):
        self.tiles = tiles
        self.batch_size = batch_size
        self.input_name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when all tiles were served."""
        if self._pos >= len(self.tiles):
            return None
        batch = self.tiles[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._pos = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item[self.input_name]
