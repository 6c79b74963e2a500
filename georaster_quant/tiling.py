"""The prediction grid: windows, tiles and the tile grid, as pure values and functions.

Output cell ``(i, j)`` covers input rows ``[i*s, (i+1)*s)`` and columns ``[j*s, (j+1)*s)``
(clipped at the raster's edge). Its class comes from the ``T x T`` tile centred on the cell:
a halo of ``(T - s) // 2`` pixels above/left and the rest below/right. Pixels outside the
raster are mirrored with the edge pixel repeated (numpy ``mode="symmetric"``).
Nothing here opens a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine

from georaster_quant.errors import ConfigError


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels; offsets may be negative (outside the raster)."""

    row_off: int
    col_off: int
    height: int
    width: int

    @classmethod
    def from_slices(cls, rows: slice, cols: slice) -> Window:
        """Build a window from two slices with explicit start and stop."""
        return cls(rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start)

    def toslices(self) -> tuple[slice, slice]:
        """Row and column slices of this window."""
        return (
            slice(self.row_off, self.row_off + self.height),
            slice(self.col_off, self.col_off + self.width),
        )

    @property
    def row_end(self) -> int:
        """First row below the window."""
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        """First column right of the window."""
        return self.col_off + self.width

    def clip(self, height: int, width: int) -> Window:
        """The part of this window inside a ``height x width`` raster (may be empty)."""
        r0, c0 = max(self.row_off, 0), max(self.col_off, 0)
        r1, c1 = min(self.row_end, height), min(self.col_end, width)
        return Window(r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))

    def padding(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Pixels of this window outside the raster, as ``((top, bottom), (left, right))``."""
        return (
            (max(-self.row_off, 0), max(self.row_end - height, 0)),
            (max(-self.col_off, 0), max(self.col_end - width, 0)),
        )


@dataclass(frozen=True)
class Tile:
    """One output cell and the model input window that decides it."""

    row: int
    col: int
    window: Window
    cell: Window


def whole_number(value: object) -> bool:
    """An int (NumPy's too), not a bool: what a count of pixels, tiles or cells must be."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class TileGrid:
    """The prediction grid over a ``height x width`` raster, in row-major order."""

    height: int
    width: int
    tile_size: int = 64
    stride: int | None = None

    def __post_init__(self) -> None:
        if self.stride is None:
            object.__setattr__(self, "stride", self.tile_size)
        if self.height < 1 or self.width < 1:
            raise ConfigError(f"raster size must be positive, got {self.height}x{self.width}")
        if self.tile_size < 1:
            raise ConfigError(f"tile size must be positive, got {self.tile_size}")
        if not whole_number(self.stride):
            raise ConfigError(f"stride must be a whole number of pixels, got {self.stride!r}")
        if not 1 <= self.step <= self.tile_size:
            raise ConfigError(
                f"stride must be between 1 and the tile size {self.tile_size}, got {self.stride}"
            )

    @property
    def step(self) -> int:
        """The stride as a plain int (``stride`` is ``None`` only before init)."""
        return int(self.stride)  # type: ignore[arg-type]

    @property
    def halo(self) -> tuple[int, int]:
        """Pixels of context before (above/left) and after (below/right) each cell."""
        extra = self.tile_size - self.step
        return extra // 2, extra - extra // 2

    @property
    def shape(self) -> tuple[int, int]:
        """Number of output rows and columns."""
        return math.ceil(self.height / self.step), math.ceil(self.width / self.step)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def tile(self, row: int, col: int) -> Tile:
        """The tile deciding output cell ``(row, col)``."""
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"cell ({row}, {col}) is outside the {rows}x{cols} grid")
        s, before = self.step, self.halo[0]
        window = Window(row * s - before, col * s - before, self.tile_size, self.tile_size)
        cell = Window(row * s, col * s, s, s).clip(self.height, self.width)
        return Tile(row, col, window, cell)

    def __iter__(self) -> Iterator[Tile]:
        rows, cols = self.shape
        for row in range(rows):
            for col in range(cols):
                yield self.tile(row, col)

    def row_window(self, row: int) -> Window:
        """The input window covering every tile of output row ``row``, halos included."""
        rows, cols = self.shape
        if not 0 <= row < rows:
            raise IndexError(f"row {row} is outside the grid's {rows} rows")
        before = self.halo[0]
        return Window(
            row * self.step - before,
            -before,
            self.tile_size,
            (cols - 1) * self.step + self.tile_size,
        )

    def output_transform(self, transform: Affine) -> Affine:
        """Georeferencing of the output grid given the input raster's transform."""
        return transform @ Affine.scale(self.step)


def mirror_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map pixel indices onto ``[0, n)`` by mirroring with the edge pixel repeated.

    This is numpy's ``mode="symmetric"`` applied as often as needed, so it also holds for
    rasters narrower than the padding (a 1-pixel raster repeats its pixel).
    """
    i = np.mod(index, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _mirrored(window: Window, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rows = mirror_index(np.arange(window.row_off, window.row_end), height)
    cols = mirror_index(np.arange(window.col_off, window.col_end), width)
    return rows, cols


def source_window(window: Window, height: int, width: int) -> Window:
    """The in-raster window holding every pixel ``window`` needs once mirrored."""
    if window.clip(height, width) == window:
        return window
    rows, cols = _mirrored(window, height, width)
    r0, c0 = int(rows.min()), int(cols.min())
    return Window(r0, c0, int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1)


def mirror_take(
    array: np.ndarray, source: Window, window: Window, height: int, width: int
) -> np.ndarray:
    """Cut ``window`` from ``array``, the pixels of ``source``, mirroring outside the raster.

    The last two axes of ``array`` are rows and columns; ``source`` must contain
    :func:`source_window` of ``window``. Each axis is cut as a few forward and reversed slices
    joined once (a halo is three: reversed, forward, reversed), not gathered pixel by pixel.
    """
    if source == window:
        return array
    array = _mirror_axis(array, -2, window.row_off, window.row_end, height, source.row_off)
    return _mirror_axis(array, -1, window.col_off, window.col_end, width, source.col_off)


#: Past this many mirrored runs (rasters much narrower than the window), gather instead.
_MAX_RUNS = 8


def _mirror_axis(
    array: np.ndarray, axis: int, start: int, stop: int, n: int, off: int
) -> np.ndarray:
    """``array`` (holding raster pixels ``off ...`` on ``axis``) at mirrored ``start:stop``.

    :func:`mirror_index` runs forward on the raster's even copies ``[2k n, (2k+1) n)`` and
    backward on the odd ones, so each copy the window overlaps is one slice.
    """
    pieces = []
    for j in range(start // n, (stop - 1) // n + 1):
        lo, hi = max(start, j * n), min(stop, (j + 1) * n)
        if j % 2 == 0:
            pieces.append(slice(lo - j * n - off, hi - j * n - off))
        else:  # reversed: from (j+1)n-1-lo down to (j+1)n-1-(hi-1)
            first, last = (j + 1) * n - 1 - lo - off, (j + 1) * n - hi - off
            pieces.append(slice(first, last - 1 if last > 0 else None, -1))
        if len(pieces) > _MAX_RUNS:
            index = mirror_index(np.arange(start, stop), n) - off
            return np.take(array, index, axis=axis)
    lead = (slice(None),) * (array.ndim + axis)
    if len(pieces) == 1 and pieces[0].step is None:
        return array[(*lead, pieces[0])]
    return np.concatenate([array[(*lead, p)] for p in pieces], axis=axis)


def tiles_from_strip(strip: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Cut the row strip read for :meth:`TileGrid.row_window` into its tiles.

    ``strip`` has shape ``(..., T, W')`` with ``W' = (cols - 1) * s + T``; the result has
    shape ``(cols, ..., T, T)`` and is a view where possible.
    """
    t, s = grid.tile_size, grid.step
    cols = (strip.shape[-1] - t) // s + 1  # the grid's columns, or a block's (lazy.py)
    view = np.lib.stride_tricks.sliding_window_view(strip, t, axis=-1)[..., ::s, :]
    view = view[..., :cols, :]  # (..., T, cols, T)
    return np.moveaxis(view, -2, 0)
