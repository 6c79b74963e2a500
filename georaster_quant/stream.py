"""Tiles of the prediction grid streamed from an open reader, row by row and in batches.

Rows are read full width in chunks aligned to the raster's block rows and kept in a rolling
buffer, so each block is decoded once even when tiles overlap (stride < tile size). Memory is
bounded by ``(tile_size + block_height) x width x bands`` at most, never by the raster's height.
Batches come band by band (C-ordered) or, for backends that read that fastest, band-interleaved
(channels-last): then GDAL writes the rows interleaved and no step transposes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from georaster_quant.errors import ConfigError
from georaster_quant.io import RasterReader
from georaster_quant.tiling import TileGrid, Window, mirror_take, source_window, tiles_from_strip


class RowBuffer:
    """Full-width raster rows kept raw (the file's dtype) in one preallocated array.

    Rows are read in chunks that end on block-row boundaries, straight into the buffer; rows no
    later strip needs are dropped when the next read needs their room (the kept rows move up,
    in place). The buffer holds exactly the most rows any one of ``spans`` (the ``(r0, r1)`` row
    ranges that will be asked for, in order) needs with the block rows that cover it, whatever
    the raster's height. ``raw`` is ``(bands, rows, width)``; with ``channels_last`` its
    memory is band-interleaved.
    """

    def __init__(
        self, reader: RasterReader, spans: Iterable[tuple[int, int]], channels_last: bool = False
    ):
        info = reader.info
        self.reader = reader
        self.block_rows = max(1, info.block_shape[0])
        capacity = max((self._read_end(r1) - r0 for r0, r1 in spans), default=0)
        if channels_last:
            interleaved = np.empty((capacity, info.width, info.count), dtype=info.dtype)
            self.raw = np.moveaxis(interleaved, -1, 0)
            self._row_major = [interleaved]  # arrays whose first axis is the row
        else:
            self.raw = np.empty((info.count, capacity, info.width), dtype=info.dtype)
            self._row_major = list(self.raw)
        self.valid = np.empty((capacity, info.width), dtype=bool)
        self.start = 0
        self.size = 0

    def _read_end(self, r1: int) -> int:
        """Where a read that must reach row ``r1`` stops: the end of its block row."""
        return min(self.reader.info.height, -(-r1 // self.block_rows) * self.block_rows)

    def rows(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw values and validity of raster rows ``[r0, r1)`` (rows only move down)."""
        if r0 >= self.start + self.size:
            self.start, self.size = r0, 0
        end = self.start + self.size
        if r1 > end:
            stop = self._read_end(r1)
            if stop - self.start > self.raw.shape[1]:
                self._drop_before(r0)  # only when the next read needs the room
            n = stop - end
            window = Window(end, 0, n, self.reader.info.width)
            part = slice(self.size, self.size + n)
            self.reader.read_raw(window, out=self.raw[:, part], valid_out=self.valid[part])
            self.size += n
        lo, hi = r0 - self.start, r1 - self.start
        return self.raw[:, lo:hi], self.valid[lo:hi]

    def _drop_before(self, r0: int) -> None:
        """Drop rows above ``r0`` (no later strip needs them); keep the rest at the top."""
        off = r0 - self.start  # > 0: the capacity covers any one span from its first row
        for rows in [*self._row_major, self.valid]:
            # In steps of at most ``off`` rows, so source and target never overlap and no
            # temporary copy is made.
            for top in range(0, self.size - off, off):
                n = min(off, self.size - off - top)
                rows[top : top + n] = rows[off + top : off + top + n]
        self.start, self.size = r0, self.size - off


def iter_row_strips(
    reader: RasterReader,
    grid: TileGrid,
    rows: Sequence[int] | None = None,
    channels_last: bool = False,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(row, raw, valid)`` for every output row: the mirrored strip of its tiles.

    ``raw`` keeps the file's dtype (``reader.to_physical`` converts, tile by tile, what is
    needed) and, with ``channels_last``, is band-interleaved in memory. ``rows``
    (increasing) restricts the output rows, e.g. to those a resumed run still needs. Each
    block of the raster is decoded once.
    """
    info = reader.info
    height, width = info.height, info.width
    rows = range(grid.shape[0]) if rows is None else list(rows)  # iterated twice
    windows = [grid.row_window(row) for row in rows]
    # Full width; rows include mirrored ones.
    sources = [source_window(window, height, width) for window in windows]
    buffer = RowBuffer(reader, [(s.row_off, s.row_end) for s in sources], channels_last)
    for row, window, source in zip(rows, windows, sources, strict=True):
        raw, valid = buffer.rows(source.row_off, source.row_end)
        yield (
            row,
            mirror_take(raw, source, window, height, width),
            mirror_take(valid, source, window, height, width),
        )


@dataclass(frozen=True)
class TileBatch:
    """A batch of tiles: raw values with nodata filled, and where each one's cell is."""

    rows: np.ndarray  # (n,) output row of each tile
    cols: np.ndarray  # (n,) output column of each tile
    data: np.ndarray  # (n, C, T, T) float32 raw values, nodata replaced by the fill values;
    # C-ordered or band-interleaved, as asked for
    valid_fraction: np.ndarray  # (n,) valid share of each cell's in-raster footprint

    def __len__(self) -> int:
        return len(self.rows)


def cell_valid_fraction(
    valid_tiles: np.ndarray, grid: TileGrid, row: int, col0: int = 0
) -> np.ndarray:
    """Valid share of each cell footprint (in-raster part) for a row of tile masks.

    The tiles are those of output row ``row`` from output column ``col0`` on.
    """
    before, s = grid.halo[0], grid.step
    cols = valid_tiles.shape[0]
    h = min(s, grid.height - row * s)
    widths = np.minimum(s, grid.width - (col0 + np.arange(cols)) * s)
    core = valid_tiles[:, before : before + h, before : before + s]
    inside = np.arange(s)[None, :] < widths[:, None]  # (cols, s): columns inside the raster
    return (core & inside[:, None, :]).sum(axis=(1, 2)) / (h * widths)


def iter_batches(
    reader: RasterReader,
    grid: TileGrid,
    fill_values: np.ndarray,
    batch_size: int,
    rows: Sequence[int] | None = None,
    skip: int = 0,
    channels_last: bool = False,
) -> Iterator[TileBatch]:
    """Batches of filled tiles in grid order (of ``rows`` only, if given); the last may be short.

    The first ``skip`` tiles of the first row are left out (a resumed run has them).
    ``channels_last`` gives band-interleaved batches, read that way from the start.
    """
    strips = iter_row_strips(reader, grid, rows, channels_last)
    return batch_strips(
        strips,
        grid,
        fill_values,
        batch_size,
        reader.to_physical,
        skip=skip,
        channels_last=channels_last,
    )


def batch_strips(
    strips: Iterable[tuple[int, np.ndarray, np.ndarray]],
    grid: TileGrid,
    fill_values: np.ndarray,
    batch_size: int,
    to_physical: Callable[..., np.ndarray],
    col0: int = 0,
    skip: int = 0,
    channels_last: bool = False,
) -> Iterator[TileBatch]:
    """Batches of filled tiles from ``(row, raw, valid)`` strips; the last may be short.

    A strip holds the tiles of one output row from column ``col0`` on (the whole row for the
    streaming reader, one block's columns for the lazy dask path), raw values in the file's
    dtype; ``to_physical`` (:func:`~georaster_quant.io.to_physical`'s signature) turns them
    into float32 physical values, band-interleaved with ``channels_last``. The first ``skip``
    tiles of the first strip are left out.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size}")
    fill = np.asarray(fill_values, dtype=np.float32)[:, None, None]
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    count = 0
    for row, raw, valid in strips:
        raw_tiles, valid_tiles = tiles_from_strip(raw, grid), tiles_from_strip(valid, grid)
        # Convert only what the current batch still needs: float32 copies stay batch-sized,
        # not row-sized, and a batch within one row needs no further copy.
        c, skip = skip, 0
        while c < len(raw_tiles):
            n = min(batch_size - count, len(raw_tiles) - c)
            vtiles = valid_tiles[c : c + n]
            filled = to_physical(raw_tiles[c : c + n], channels_last=channels_last)  # one copy
            if not vtiles.all():  # most batches have no nodata: skip a pass over the floats
                np.copyto(filled, np.broadcast_to(fill, filled.shape), where=~vtiles[:, None])
            cols = col0 + c + np.arange(n)
            frac = cell_valid_fraction(vtiles, grid, row, col0 + c)
            pending.append((np.full_like(cols, row), cols, filled, frac))
            count += n
            c += n
            if count == batch_size:
                yield _batch(pending)
                pending, count = [], 0
    if count:
        yield _batch(pending)


def _batch(pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> TileBatch:
    """One batch from consecutive pieces of rows (copied only when there are several).

    The pieces' data are joined in the memory layout they have.
    """
    if len(pieces) == 1:
        return TileBatch(*pieces[0])
    rows, cols, data, frac = zip(*pieces, strict=True)
    joined = np.empty_like(data[0], shape=(sum(map(len, data)), *data[0].shape[1:]))
    np.concatenate(data, out=joined)
    return TileBatch(np.concatenate(rows), np.concatenate(cols), joined, np.concatenate(frac))
