"""The prediction grid (DESIGN: "The prediction grid"): windows, tiles, strips and mirroring."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from affine import Affine
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from georaster_quant import errors
from georaster_quant.tiling import (
    TileGrid,
    Window,
    mirror_index,
    mirror_take,
    source_window,
    tiles_from_strip,
)


def mirror_pad(raster, window, height, width):
    """Read ``window`` from a whole in-memory raster the way the reader does."""
    source = source_window(window, height, width)
    return mirror_take(
        raster[..., source.row_off : source.row_end, source.col_off : source.col_end],
        source,
        window,
        height,
        width,
    )


PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)
#: Iterating a grid is Python-speed: keep each example's cell count small.
MAX_CELLS = 3000

sizes = st.integers(min_value=1, max_value=300)
tile_sizes = st.integers(min_value=1, max_value=64)


@st.composite
def grids(draw: st.DrawFn, max_cells: int | None = MAX_CELLS) -> TileGrid:
    """An arbitrary valid grid: size 1..300, tile 1..64, stride 1..tile."""
    height, width, tile = draw(sizes), draw(sizes), draw(tile_sizes)
    stride = draw(st.integers(min_value=1, max_value=tile))
    grid = TileGrid(height, width, tile_size=tile, stride=stride)
    if max_cells is not None:
        assume(len(grid) <= max_cells)
    return grid


def coords(height: int, width: int) -> np.ndarray:
    """An array whose value encodes its own pixel position: ``row * width + col``."""
    return np.arange(height * width, dtype=np.int64).reshape(height, width)


def padded_global(grid: TileGrid) -> tuple[np.ndarray, int]:
    """The coordinate raster mirrored on every side (numpy ``symmetric``) and the pad used.

    ``pad = tile_size + 1`` covers every tile window of the grid.
    """
    pad = grid.tile_size + 1
    return np.pad(coords(grid.height, grid.width), pad, mode="symmetric"), pad


def slice_padded(padded: np.ndarray, pad: int, window: Window) -> np.ndarray:
    rows, cols = window.toslices()
    return padded[rows.start + pad : rows.stop + pad, cols.start + pad : cols.stop + pad]


# --- the grid ---------------------------------------------------------------------------------


@PROPERTY
@given(grids())
def test_cells_partition_the_raster(grid: TileGrid) -> None:
    hits = np.zeros((grid.height, grid.width), dtype=np.int32)
    for tile in grid:
        cell = tile.cell
        assert cell.height >= 1 and cell.width >= 1
        assert cell == cell.clip(grid.height, grid.width)  # a cell never leaves the raster
        hits[cell.toslices()] += 1
    assert np.all(hits == 1), "cells must be disjoint and cover every pixel"


@PROPERTY
@given(grids())
def test_iteration_is_row_major_and_complete(grid: TileGrid) -> None:
    rows, cols = grid.shape
    order = [(t.row, t.col) for t in grid]
    assert order == [(r, c) for r in range(rows) for c in range(cols)]
    assert len(grid) == rows * cols == len(order)


@PROPERTY
@given(grids(max_cells=None))
def test_shape_and_len(grid: TileGrid) -> None:
    s = grid.step
    assert grid.shape == (math.ceil(grid.height / s), math.ceil(grid.width / s))
    assert len(grid) == grid.shape[0] * grid.shape[1]


@PROPERTY
@given(grids())
def test_tile_windows_are_square_and_centred_on_their_cell(grid: TileGrid) -> None:
    t, s = grid.tile_size, grid.step
    before, after = (t - s) // 2, math.ceil((t - s) / 2)
    assert grid.halo == (before, after)
    for tile in grid:
        w = tile.window
        assert (w.height, w.width) == (t, t)
        assert w.row_off == tile.row * s - before
        assert w.col_off == tile.col * s - before
        # the full (unclipped) cell footprint plus `after` pixels ends the window
        assert w.row_end == (tile.row + 1) * s + after
        assert w.col_end == (tile.col + 1) * s + after
        # the cell is the stride footprint clipped to the raster
        full_cell = Window(tile.row * s, tile.col * s, s, s)
        assert tile.cell == full_cell.clip(grid.height, grid.width)


@PROPERTY
@given(grids())
def test_row_window_is_exactly_the_union_of_the_row_tiles(grid: TileGrid) -> None:
    rows, cols = grid.shape
    for row in range(rows):
        rw = grid.row_window(row)
        covered = np.zeros((rw.height, rw.width), dtype=bool)
        for col in range(cols):
            w = grid.tile(row, col).window
            r0, c0 = w.row_off - rw.row_off, w.col_off - rw.col_off
            assert r0 >= 0 and c0 >= 0
            assert r0 + w.height <= rw.height and c0 + w.width <= rw.width
            covered[r0 : r0 + w.height, c0 : c0 + w.width] = True
        assert covered.all(), "row window must not contain pixels outside every tile"


def test_tile_and_row_window_reject_cells_outside_the_grid() -> None:
    grid = TileGrid(100, 70, tile_size=32, stride=16)
    rows, cols = grid.shape
    for bad in [(-1, 0), (0, -1), (rows, 0), (0, cols)]:
        with pytest.raises(IndexError):
            grid.tile(*bad)
    with pytest.raises(IndexError):
        grid.row_window(rows)
    with pytest.raises(IndexError):
        grid.row_window(-1)


def test_default_stride_is_the_tile_size() -> None:
    grid = TileGrid(130, 65)
    assert grid.tile_size == 64 and grid.stride == 64 and grid.step == 64
    assert grid.halo == (0, 0)
    assert grid.shape == (3, 2)


@pytest.mark.parametrize("stride", [0, -3, 65, 1000])
def test_invalid_stride_is_a_config_error(stride: int) -> None:
    with pytest.raises(errors.ConfigError, match="stride"):
        TileGrid(100, 100, tile_size=64, stride=stride)


@pytest.mark.parametrize(
    "height,width,tile",
    [(0, 10, 8), (10, 0, 8), (-1, 10, 8), (10, 10, 0)],
)
def test_invalid_sizes_are_config_errors(height: int, width: int, tile: int) -> None:
    with pytest.raises(errors.ConfigError) as info:
        TileGrid(height, width, tile_size=tile)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, errors.GeoRasterQuantError)


def test_grid_is_a_frozen_value() -> None:
    grid = TileGrid(10, 10, tile_size=4, stride=2)
    assert grid == TileGrid(10, 10, tile_size=4, stride=2)
    with pytest.raises(AttributeError):
        grid.stride = 3  # type: ignore[misc]


# --- strips and mirroring ---------------------------------------------------------------------


@PROPERTY
@given(grids())
def test_tiles_from_strip_cuts_exactly_each_tile_window(grid: TileGrid) -> None:
    padded, pad = padded_global(grid)
    rows, cols = grid.shape
    t = grid.tile_size
    for row in range(rows):
        strip = slice_padded(padded, pad, grid.row_window(row))
        tiles = tiles_from_strip(strip, grid)
        assert tiles.shape == (cols, t, t)
        windows = [grid.tile(row, c).window for c in range(cols)]
        expected = np.stack([slice_padded(padded, pad, w) for w in windows])
        np.testing.assert_array_equal(tiles, expected)


@PROPERTY
@given(grids(), st.integers(min_value=1, max_value=3))
def test_tiles_from_strip_keeps_leading_band_axes(grid: TileGrid, bands: int) -> None:
    padded, pad = padded_global(grid)
    row = grid.shape[0] - 1  # the last row has the deepest bottom padding
    strip = slice_padded(padded, pad, grid.row_window(row))
    stack = np.stack([strip + 1_000_000 * b for b in range(bands)])  # (bands, T, W')
    tiles = tiles_from_strip(stack, grid)
    assert tiles.shape == (grid.shape[1], bands, grid.tile_size, grid.tile_size)
    for col in range(grid.shape[1]):
        one = slice_padded(padded, pad, grid.tile(row, col).window)
        for b in range(bands):
            np.testing.assert_array_equal(tiles[col, b], one + 1_000_000 * b)


@PROPERTY
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 90),
    st.integers(0, 90),
    st.integers(0, 90),
    st.integers(0, 90),
)
def test_mirror_pad_of_the_whole_raster_is_numpy_symmetric(
    height: int, width: int, top: int, bottom: int, left: int, right: int
) -> None:
    raster = coords(height, width)
    window = Window(-top, -left, height + top + bottom, width + left + right)
    expected = np.pad(raster, ((top, bottom), (left, right)), mode="symmetric")
    np.testing.assert_array_equal(mirror_pad(raster, window, height, width), expected)
    # leading axes (bands) are not padded; bool masks work the same way
    stack = np.stack([raster, -raster])
    out = mirror_pad(stack, window, height, width)
    np.testing.assert_array_equal(out, np.stack([expected, -expected]))
    mask = raster % 3 == 0
    np.testing.assert_array_equal(mirror_pad(mask, window, height, width), expected % 3 == 0)


def test_mirror_pad_one_pixel_raster_repeats_the_pixel() -> None:
    raster = np.array([[7.0]], dtype=np.float32)
    window = Window(-31, -31, 64, 64)
    out = mirror_pad(raster, window, 1, 1)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert np.all(out == 7.0)
    np.testing.assert_array_equal(out, np.pad(raster, ((31, 32), (31, 32)), mode="symmetric"))


def test_mirror_pad_inside_the_raster_is_a_no_op() -> None:
    raster = coords(5, 6)
    assert np.shares_memory(mirror_pad(raster, Window(0, 0, 5, 6), 5, 6), raster)


@PROPERTY
@given(st.integers(-500, 500), st.integers(1, 40))
def test_mirror_index_matches_numpy_symmetric(index: int, n: int) -> None:
    base = np.arange(n)
    reach = abs(index) + 1
    padded = np.pad(base, (reach, reach), mode="symmetric")
    assert mirror_index(np.array([index]), n)[0] == padded[index + reach]


@PROPERTY
@given(grids())
def test_mirror_pad_of_a_tile_matches_global_mirroring_when_the_pad_is_shallow(
    grid: TileGrid,
) -> None:
    """Where the pad is no deeper than the in-raster part, padding the part is exact."""
    padded, pad = padded_global(grid)
    raster = coords(grid.height, grid.width)
    for tile in grid:
        w = tile.window
        inside = w.clip(grid.height, grid.width)
        (top, bottom), (left, right) = w.padding(grid.height, grid.width)
        shallow_rows = inside.height == grid.height or max(top, bottom) <= inside.height
        shallow_cols = inside.width == grid.width or max(left, right) <= inside.width
        if not (shallow_rows and shallow_cols):
            continue
        got = mirror_pad(raster, w, grid.height, grid.width)
        np.testing.assert_array_equal(got, slice_padded(padded, pad, w))


def test_mirror_pad_of_a_narrow_edge_tile_matches_global_mirroring() -> None:
    # width 65, tile 64, stride 64: the last column's tile has 1 pixel inside, 63 mirrored.
    grid = TileGrid(64, 65, tile_size=64, stride=64)
    padded, pad = padded_global(grid)
    raster = coords(grid.height, grid.width)
    w = grid.tile(0, 1).window
    got = mirror_pad(raster, w, 64, 65)
    np.testing.assert_array_equal(got, slice_padded(padded, pad, w))


# --- georeferencing ---------------------------------------------------------------------------


@PROPERTY
@given(grids(max_cells=None), st.floats(0.5, 100), st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_output_transform_scales_the_input_transform_by_the_stride(
    grid: TileGrid, res: float, x0: float, y0: float
) -> None:
    transform = Affine(res, 0.0, x0, 0.0, -res, y0)
    with warnings.catch_warnings():
        # tiling.py composes with `*`, which affine 3 deprecates in favour of `@`
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        out = grid.output_transform(transform)
    assert out == transform @ Affine.scale(grid.step)
    # output pixel (i, j)'s corner is input pixel (i*s, j*s)'s corner
    rows, cols = grid.shape
    s = grid.step
    for i, j in [(0, 0), (rows - 1, cols - 1), (rows // 2, 0)]:
        assert out @ (j, i) == pytest.approx(transform @ (j * s, i * s))


# --- Window -----------------------------------------------------------------------------------

offsets = st.integers(-500, 500)
extents = st.integers(0, 500)


@settings(max_examples=100, deadline=None)
@given(offsets, offsets, extents, extents)
def test_window_slices_round_trip(row_off: int, col_off: int, height: int, width: int) -> None:
    w = Window(row_off, col_off, height, width)
    rows, cols = w.toslices()
    assert (rows.start, rows.stop, cols.start, cols.stop) == (
        row_off,
        row_off + height,
        col_off,
        col_off + width,
    )
    assert Window.from_slices(rows, cols) == w
    assert (w.row_end, w.col_end) == (row_off + height, col_off + width)


@settings(max_examples=100, deadline=None)
@given(offsets, offsets, extents, extents, st.integers(1, 300), st.integers(1, 300))
def test_window_clip_and_padding_split_the_window(
    row_off: int, col_off: int, height: int, width: int, raster_h: int, raster_w: int
) -> None:
    w = Window(row_off, col_off, height, width)
    inside = w.clip(raster_h, raster_w)
    assert inside.height >= 0 and inside.width >= 0
    # clip is the set intersection with the raster
    full = np.zeros((raster_h, raster_w), dtype=bool)
    r0, r1 = max(row_off, 0), min(row_off + height, raster_h)
    c0, c1 = max(col_off, 0), min(col_off + width, raster_w)
    if r1 > r0 and c1 > c0:
        full[r0:r1, c0:c1] = True
    assert inside.height * inside.width == full.sum()
    if full.any():
        assert inside == Window(r0, c0, r1 - r0, c1 - c0)
        # for windows that overlap the raster: padding + inside part = the whole window
        (top, bottom), (left, right) = w.padding(raster_h, raster_w)
        assert top + inside.height + bottom == height
        assert left + inside.width + right == width
        assert inside.row_off - top == row_off and inside.col_off - left == col_off


def test_window_clip_and_padding_examples() -> None:
    w = Window(-3, -5, 20, 20)
    assert w.clip(10, 40) == Window(0, 0, 10, 15)
    assert w.padding(10, 40) == ((3, 7), (5, 0))
    inner = Window(2, 3, 4, 5)
    assert inner.clip(10, 10) == inner
    assert inner.padding(10, 10) == ((0, 0), (0, 0))
    outside = Window(50, 50, 5, 5).clip(10, 10)
    assert outside.height == 0 and outside.width == 0


def test_window_is_a_frozen_value() -> None:
    w = Window(1, 2, 3, 4)
    assert w == Window(1, 2, 3, 4) and hash(w) == hash(Window(1, 2, 3, 4))
    with pytest.raises(AttributeError):
        w.row_off = 5  # type: ignore[misc]
