"""Labelled tiles for training: majority labels, nodata filtering and a spatially blocked split.

A tile's label is the majority class of its central ``label_footprint`` square. The split
assigns square blocks of the raster to train or validation; a tile belongs to a split only if
every block it touches does, so no training tile overlaps a validation tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS

from georaster_quant.errors import ConfigError, RasterContractError, TrainingDataError
from georaster_quant.io import RasterReader
from georaster_quant.stream import iter_row_strips
from georaster_quant.tiling import TileGrid, tiles_from_strip


@dataclass
class TileSet:
    """Labelled tiles held in memory in the raster's own dtype."""

    data: np.ndarray  # (N, C, T, T) raw values
    valid: np.ndarray  # (N, T, T) bool
    labels: np.ndarray  # (N,) int64 class index
    origins: np.ndarray  # (N, 2) row/col of each tile window's top-left pixel

    def __len__(self) -> int:
        return len(self.labels)

    def filled(self, fill: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Float32 tiles (all, or those at ``index``) with nodata replaced by ``fill``."""
        data = self.data if index is None else self.data[index]
        valid = self.valid if index is None else self.valid[index]
        return np.where(valid[:, None], data.astype(np.float32), fill[None, :, None, None])

    def subset(self, index: np.ndarray) -> TileSet:
        """Tiles at ``index``."""
        return TileSet(self.data[index], self.valid[index], self.labels[index], self.origins[index])


def check_label_grid(image: RasterReader, labels: RasterReader) -> None:
    """Labels must be one band of class indexes on exactly the image's pixel grid."""
    a, b = image.info, labels.info
    if len(b.bands) != 1:
        raise RasterContractError(
            f"{b.path}: labels must be one band of class indexes, this raster has {len(b.bands)}"
        )
    if (a.height, a.width) != (b.height, b.width):
        raise RasterContractError(
            f"{b.path}: labels are {b.width}x{b.height} pixels but the image "
            f"{a.path} is {a.width}x{a.height}"
        )
    if a.crs and b.crs and CRS.from_user_input(a.crs) != CRS.from_user_input(b.crs):
        raise RasterContractError(
            f"{b.path}: labels are in {b.crs} but the image {a.path} is in {a.crs}; "
            "they must share one pixel grid"
        )
    if not a.transform.almost_equals(b.transform):
        raise RasterContractError(
            f"{b.path}: labels transform differs from the image's ({a.path}); "
            "they must share one pixel grid"
        )


def majority_labels(
    label_tiles: np.ndarray,
    label_valid: np.ndarray,
    num_classes: int,
    min_valid: float,
    area: np.ndarray | None = None,
) -> np.ndarray:
    """Majority class per tile of ``(N, h, w)`` labels; -1 where too little is labelled.

    "Too little" is less than ``min_valid`` of ``area``, the pixels that count per tile (by
    default all of them; smaller for cells cut by the raster's edge).
    """
    n = len(label_tiles)
    flat = np.where(label_valid, label_tiles, num_classes).reshape(n, -1).astype(np.int64)
    counts = np.zeros((n, num_classes + 1), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), flat.shape[1]), flat.ravel()), 1)
    labelled = counts[:, :num_classes]
    out = labelled.argmax(axis=1)
    enough = labelled.sum(axis=1) >= min_valid * (flat.shape[1] if area is None else area)
    return np.where(enough, out, -1)


def check_label_values(values: np.ndarray, valid: np.ndarray, num_classes: int, path: str) -> None:
    """Refuse label values outside ``0 .. num_classes - 1``."""
    bad = np.unique(values[valid & ((values < 0) | (values >= num_classes))])
    if bad.size:
        raise RasterContractError(
            f"{path}: label value(s) {bad[:5].astype(int).tolist()} are outside the "
            f"{num_classes} classes (0..{num_classes - 1})"
        )


def sample_tiles(
    image: RasterReader,
    labels: RasterReader,
    *,
    tile_size: int,
    stride: int,
    label_footprint: int,
    num_classes: int,
    min_valid: float = 0.5,
    max_tiles: int | None = None,
    seed: int = 0,
) -> TileSet:
    """Read every grid tile (or a random subset of ``max_tiles``) with its majority label."""
    check_label_grid(image, labels)
    grid = TileGrid(image.info.height, image.info.width, tile_size, stride)
    rows, cols = grid.shape
    keep_cell = np.ones(grid.shape, dtype=bool)
    if max_tiles is not None and len(grid) > max_tiles:
        keep_cell[:] = False
        chosen = np.random.default_rng(seed).choice(len(grid), max_tiles, replace=False)
        keep_cell.flat[chosen] = True
    lo = (tile_size - label_footprint) // 2
    foot = slice(lo, lo + label_footprint)
    parts: list[tuple[np.ndarray, ...]] = []
    dtype = np.dtype(image.info.dtype)
    store = dtype if dtype.kind in "iu" and not image.info.scaled else np.dtype(np.float32)
    for (row, raw, valid), (_, lab, lab_valid) in zip(
        iter_row_strips(image, grid), iter_row_strips(labels, grid), strict=True
    ):
        check_label_values(lab[0], lab_valid, num_classes, labels.info.path)
        tiles = tiles_from_strip(raw, grid)
        if image.info.scaled:
            tiles = image.to_physical(tiles)
        vt = tiles_from_strip(valid, grid)
        lt = tiles_from_strip(lab[0], grid)[:, foot, foot]
        lv = tiles_from_strip(lab_valid, grid)[:, foot, foot]
        y = majority_labels(lt, lv, num_classes, min_valid)
        ok = keep_cell[row] & (y >= 0) & (vt.mean(axis=(1, 2)) >= min_valid)
        idx = np.flatnonzero(ok)
        if idx.size:
            origins = np.stack(
                [np.full(idx.size, row * grid.step - grid.halo[0]), idx * grid.step - grid.halo[0]],
                axis=1,
            )
            parts.append((tiles[idx].astype(store), vt[idx].copy(), y[idx], origins))
    if not parts:
        raise TrainingDataError(
            f"{labels.info.path}: no labelled tile with at least {min_valid:.0%} valid pixels"
        )
    data, valid, y, origins = (np.concatenate(p) for p in zip(*parts, strict=True))
    return TileSet(data, valid, y.astype(np.int64), origins)


def spatial_split(
    tiles: TileSet,
    *,
    height: int,
    width: int,
    tile_size: int,
    block: int,
    val_fraction: float,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """Split tile indexes into train and validation by random square blocks of ``block`` px.

    Returns the train index, the validation index and the validation blocks ``[row, col]``.
    """
    if block < tile_size:
        raise ConfigError(f"split block ({block}) must be at least the tile size ({tile_size})")
    brows, bcols = -(-height // block), -(-width // block)
    if brows * bcols < 2:
        raise TrainingDataError(
            f"a {width}x{height} raster is a single {block}-pixel split block; "
            "lower --split-block to make a validation split"
        )
    rng = np.random.default_rng(seed + 7919)
    is_val = rng.random((brows, bcols)) < val_fraction
    if not is_val.any():
        is_val.flat[rng.integers(is_val.size)] = True
    if is_val.all():
        is_val.flat[rng.integers(is_val.size)] = False
    val_blocks = np.argwhere(is_val).tolist()
    train, val = split_by_blocks(
        tiles, height=height, width=width, tile_size=tile_size, block=block, val_blocks=val_blocks
    )
    if len(train) == 0 or len(val) == 0:
        raise TrainingDataError(
            f"too few labelled tiles for a train/validation split ({len(train)} train, "
            f"{len(val)} validation); use a larger raster or a smaller --split-block"
        )
    return train, val, val_blocks


def split_by_blocks(
    tiles: TileSet,
    *,
    height: int,
    width: int,
    tile_size: int,
    block: int,
    val_blocks: list[list[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indexes given the validation blocks; straddling tiles are dropped.

    Blocks are at least a tile wide, so a tile touches at most 2 x 2 blocks: its corners.
    """
    if block < tile_size:
        raise ConfigError(f"split block ({block}) must be at least the tile size ({tile_size})")
    is_val = np.zeros((-(-height // block), -(-width // block)), dtype=bool)
    for r, c in val_blocks:
        if 0 <= r < is_val.shape[0] and 0 <= c < is_val.shape[1]:
            is_val[r, c] = True
    r0 = np.clip(tiles.origins[:, 0], 0, height - 1) // block
    r1 = np.clip(tiles.origins[:, 0] + tile_size - 1, 0, height - 1) // block
    c0 = np.clip(tiles.origins[:, 1], 0, width - 1) // block
    c1 = np.clip(tiles.origins[:, 1] + tile_size - 1, 0, width - 1) // block
    corners = [is_val[r, c] for r in (r0, r1) for c in (c0, c1)]
    train = np.flatnonzero(~np.logical_or.reduce(corners))
    val = np.flatnonzero(np.logical_and.reduce(corners))
    return train, val
