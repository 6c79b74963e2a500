"""Tiles of the prediction grid streamed from an open reader, row by row and in batches.

Rows are read full width in chunks aligned to the raster's block rows and kept in a rolling
buffer, so each block is decoded once even when tiles overlap (stride < tile size). Memory is
bounded by ``(tile_size + block_height) x width x bands``, never by the raster's height.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from georaster_quant.io import RasterReader
from georaster_quant.tiling import TileGrid, Window, mirror_take, source_window, tiles_from_strip


def iter_row_strips(
    reader: RasterReader, grid: TileGrid, rows: Sequence[int] | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(row, data, valid)`` for every output row: the mirrored strip of its tiles.

    ``rows`` (increasing) restricts the output rows, e.g. to those a resumed run still needs.
    """
    info = reader.info
    height, width = info.height, info.width
    block_rows = max(1, info.block_shape[0])
    buf_start = 0
    data = np.empty((info.count, 0, width), dtype=np.float32)
    valid = np.empty((0, width), dtype=bool)
    for row in range(grid.shape[0]) if rows is None else rows:
        window = grid.row_window(row)
        source = source_window(window, height, width)  # full width; rows incl. mirrored ones
        r0, r1 = source.row_off, source.row_end
        buf_end = buf_start + valid.shape[0]
        if r0 >= buf_end:  # nothing buffered is needed any more
            data, valid, buf_start = data[:, :0], valid[:0], r0
        elif r0 > buf_start:  # drop rows no later tile needs (sources only move down)
            data, valid = data[:, r0 - buf_start :], valid[r0 - buf_start :]
            buf_start = r0
        buf_end = buf_start + valid.shape[0]
        if r1 > buf_end:  # read on to the end of the block row so no block is decoded twice
            stop = min(height, -(-r1 // block_rows) * block_rows)
            new_data, new_valid = reader.read(Window(buf_end, 0, stop - buf_end, width))
            data = np.concatenate([data, new_data], axis=1)
            valid = np.concatenate([valid, new_valid], axis=0)
        lo, hi = r0 - buf_start, r1 - buf_start
        yield (
            row,
            mirror_take(data[:, lo:hi], source, window, height, width),
            mirror_take(valid[lo:hi], source, window, height, width),
        )


@dataclass(frozen=True)
class TileBatch:
    """A batch of tiles: raw values with nodata filled, and where each one's cell is."""

    rows: np.ndarray  # (n,) output row of each tile
    cols: np.ndarray  # (n,) output column of each tile
    data: np.ndarray  # (n, C, T, T) float32 raw values, nodata replaced by the fill values
    valid_fraction: np.ndarray  # (n,) valid share of each cell's in-raster footprint

    def __len__(self) -> int:
        return len(self.rows)


def cell_valid_fraction(valid_tiles: np.ndarray, grid: TileGrid, row: int) -> np.ndarray:
    """Valid share of each cell footprint (in-raster part) for one row of tile masks."""
    before, s = grid.halo[0], grid.step
    cols = valid_tiles.shape[0]
    h = min(s, grid.height - row * s)
    widths = np.minimum(s, grid.width - np.arange(cols) * s)
    core = valid_tiles[:, before : before + h, before : before + s]
    inside = np.arange(s)[None, :] < widths[:, None]  # (cols, s): columns inside the raster
    return (core & inside[:, None, :]).sum(axis=(1, 2)) / (h * widths)


def iter_batches(
    reader: RasterReader,
    grid: TileGrid,
    fill_values: np.ndarray,
    batch_size: int,
    rows: Sequence[int] | None = None,
) -> Iterator[TileBatch]:
    """Batches of filled tiles in grid order (of ``rows`` only, if given); the last may be short."""
    fill = np.asarray(fill_values, dtype=np.float32)[:, None, None]
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    count = 0
    for row, data, valid in iter_row_strips(reader, grid, rows):
        tiles = tiles_from_strip(data, grid)
        vtiles = tiles_from_strip(valid, grid)
        filled = np.where(vtiles[:, None], tiles, fill)
        cols = np.arange(tiles.shape[0])
        pending.append(
            (np.full_like(cols, row), cols, filled, cell_valid_fraction(vtiles, grid, row))
        )
        count += len(cols)
        while count >= batch_size:
            yield _take(pending, batch_size)
            count -= batch_size
    if count:
        yield _take(pending, count)


def _take(pending: list[tuple[np.ndarray, ...]], n: int) -> TileBatch:
    parts: list[list[np.ndarray]] = [[], [], [], []]
    need = n
    while need:
        head = pending[0]
        k = min(need, len(head[0]))
        for i in range(4):
            parts[i].append(head[i][:k])
        if k == len(head[0]):
            pending.pop(0)
        else:
            pending[0] = tuple(a[k:] for a in head)
        need -= k
    rows, cols, data, frac = (np.concatenate(p) for p in parts)
    return TileBatch(rows, cols, np.ascontiguousarray(data, dtype=np.float32), frac)
