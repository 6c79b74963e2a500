"""Streaming the prediction grid from a reader: row strips and filled tile batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from georaster_quant.errors import ConfigError
from georaster_quant.io import RasterReader
from georaster_quant.stream import RowBuffer, TileBatch, iter_batches, iter_row_strips
from georaster_quant.tiling import TileGrid, Window, source_window

TILE = 64
STRIDES = [64, 16, 13]
LAYOUTS = {
    "tiled32": {"tiled": True, "blocksize": 32},
    "striped8": {"tiled": False, "blocksize": 8},
}
FILL = np.array([-1.0, -2.0, -3.0], dtype=np.float32)

# 190 x 176: every edge cell's halo is no deeper than the in-raster part of its tile for
# strides 64, 16 and 13, so reader windows agree with numpy symmetric padding of the raster
# (the tests at the end cover a 200x150 raster with narrow edge cells).
HEIGHT, WIDTH = 190, 176


def scene(height: int, width: int) -> np.ndarray:
    """Three uint16 bands with distinct values and nodata (0) patches, some at the edges."""
    array = (np.arange(3 * height * width).reshape(3, height, width) % 60_000 + 1).astype("uint16")
    array[:, 40:60, 30:45] = 0  # an interior nodata patch
    array[1, 100:103, 70:72] = 0  # nodata in one band only
    array[:, height - 5 :, width - 20 :] = 0  # a patch in the bottom-right partial cells
    array[:, :, :3] = 0  # a nodata column strip on the left edge
    return array


@pytest.fixture(params=list(LAYOUTS))
def raster(request, make_tif) -> tuple[Path, np.ndarray]:
    array = scene(HEIGHT, WIDTH)
    return make_tif(f"{request.param}.tif", array, nodata=0, **LAYOUTS[request.param]), array


def collect(
    reader: RasterReader, grid: TileGrid, batch_size: int, channels_last: bool = False
) -> list[TileBatch]:
    return list(iter_batches(reader, grid, FILL, batch_size, channels_last=channels_last))


def symmetric(array: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(array, [(0, 0)] * (array.ndim - 2) + [(pad, pad), (pad, pad)], mode="symmetric")


def cut(padded: np.ndarray, pad: int, window: Window) -> np.ndarray:
    rows, cols = window.toslices()
    return padded[..., rows.start + pad : rows.stop + pad, cols.start + pad : cols.stop + pad]


@pytest.mark.parametrize("stride", STRIDES)
def test_batches_cover_the_grid_once_in_row_major_order(raster, stride: int) -> None:
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        batches = collect(reader, grid, batch_size=7)
    sizes = [len(b) for b in batches]
    assert all(n == 7 for n in sizes[:-1]) and 1 <= sizes[-1] <= 7
    cells = [(int(r), int(c)) for b in batches for r, c in zip(b.rows, b.cols, strict=True)]
    assert cells == [(t.row, t.col) for t in grid]
    assert len(cells) == len(grid)


@pytest.mark.parametrize("stride", STRIDES)
def test_tiles_equal_reader_windows_with_nodata_filled(raster, stride: int) -> None:
    path, array = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    pad = TILE + 1
    padded = symmetric(array.astype(np.float32), pad)  # DESIGN's mirroring of the raster
    with RasterReader(path) as reader:
        batches = collect(reader, grid, batch_size=16)
        seen = 0
        for batch in batches:
            assert batch.data.dtype == np.float32
            assert batch.data.shape == (len(batch), 3, TILE, TILE)
            assert batch.data.flags["C_CONTIGUOUS"]
            for row, col, tile in zip(batch.rows, batch.cols, batch.data, strict=True):
                window = grid.tile(int(row), int(col)).window
                data, valid = reader.read(window)
                expected = np.where(valid[None], data, FILL[:, None, None])
                np.testing.assert_array_equal(tile, expected, err_msg=f"cell ({row}, {col})")
                # ...which is the raster mirrored numpy-style, nodata filled
                raw = cut(padded, pad, window)
                nodata = np.any(raw == 0, axis=0)[None]
                np.testing.assert_array_equal(np.where(nodata, FILL[:, None, None], raw), tile)
                seen += 1
    assert seen == len(grid)


@pytest.mark.parametrize("stride", STRIDES)
def test_nodata_pixels_hold_the_fill_values(raster, stride: int) -> None:
    path, array = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        batches = collect(reader, grid, batch_size=32)
    data = np.concatenate([b.data for b in batches])
    invalid = np.any(data == FILL[None, :, None, None], axis=1)
    # filled pixels carry all fill values at once (a single bad band blanks the pixel)
    for band, value in enumerate(FILL):
        np.testing.assert_array_equal(data[:, band][invalid], value)
    assert invalid.any() and not invalid.all()
    assert not np.any(data == 0)  # the nodata value itself never reaches the model


@pytest.mark.parametrize("stride", STRIDES)
def test_valid_fraction_of_each_cell_footprint(raster, stride: int) -> None:
    path, array = raster
    valid = np.all(array != 0, axis=0)
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        batches = collect(reader, grid, batch_size=10)
    fractions = np.concatenate([b.valid_fraction for b in batches])
    expected = np.array([valid[t.cell.toslices()].mean() for t in grid])
    np.testing.assert_allclose(fractions, expected, rtol=0, atol=1e-12)
    partial = [i for i, t in enumerate(grid) if (t.cell.height, t.cell.width) != (stride, stride)]
    if HEIGHT % stride or WIDTH % stride:
        assert partial, "the grid should have partial edge cells"
    assert np.all((fractions >= 0) & (fractions <= 1))
    # the bottom-right cell is partly covered by the nodata patch
    assert 0 <= fractions[-1] < 1


@pytest.mark.parametrize("stride", STRIDES)
def test_row_strips_equal_reads_of_the_row_window(raster, stride: int) -> None:
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    rows = []
    with RasterReader(path) as reader:
        for row, raw, valid in iter_row_strips(reader, grid):
            data = reader.to_physical(raw)
            window = grid.row_window(row)
            assert data.shape == (3, window.height, window.width)
            assert valid.shape == (window.height, window.width)
            expected_data, expected_valid = reader.read(window)
            np.testing.assert_array_equal(data, expected_data)
            np.testing.assert_array_equal(valid, expected_valid)
            rows.append(row)
    assert rows == list(range(grid.shape[0]))


@pytest.mark.parametrize("stride", [64, 13])
def test_batch_size_only_regroups_the_tiles(raster, stride: int) -> None:
    """Batches of 1, of a row's worth, of more than a row or of everything hold the same tiles."""
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        ref = collect(reader, grid, batch_size=7)
        for size in (1, grid.shape[1], grid.shape[1] + 1, len(grid) + 5):
            batches = collect(reader, grid, batch_size=size)
            assert [len(b) for b in batches[:-1]] == [size] * (len(batches) - 1)
            for field in ("rows", "cols", "data", "valid_fraction"):
                got = np.concatenate([getattr(b, field) for b in batches])
                np.testing.assert_array_equal(got, np.concatenate([getattr(b, field) for b in ref]))
            assert all(b.data.flags.c_contiguous and b.data.dtype == np.float32 for b in batches)
        with pytest.raises(ConfigError, match="batch size"):
            collect(reader, grid, batch_size=0)


@pytest.mark.parametrize("stride", [64, 32, 16, 13, 1])
def test_every_raster_row_is_read_exactly_once(raster, stride: int) -> None:
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        block_rows = reader.info.block_shape[0]
        windows: list[Window] = []
        inner = reader.read_raw

        def recording_read(window: Window, out=None, valid_out=None):
            windows.append(window)
            return inner(window, out=out, valid_out=valid_out)

        reader.read_raw = recording_read  # type: ignore[method-assign]
        for _ in iter_row_strips(reader, grid):
            pass
    reads_per_row = np.zeros(HEIGHT, dtype=np.int32)
    for w in windows:
        assert (w.col_off, w.width) == (0, WIDTH), "reads must be full width"
        assert w == w.clip(HEIGHT, WIDTH), "reads must stay inside the raster"
        assert w.row_off % block_rows == 0, "reads must start on a block row"
        assert w.row_end % block_rows == 0 or w.row_end == HEIGHT
        reads_per_row[w.row_off : w.row_end] += 1
        # bounded memory: one read never exceeds a tile plus a block row of rows
        assert w.height <= TILE + block_rows
    np.testing.assert_array_equal(reads_per_row, 1)
    assert [w.row_off for w in windows] == sorted(w.row_off for w in windows)


@pytest.mark.parametrize("stride", [64, 16, 13])
def test_a_subset_of_rows_streams_the_same_strips(raster, stride: int) -> None:
    """A resumed run asks for some rows only (gaps, a start mid-block): the full run's strips."""
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        strips = iter_row_strips(reader, grid)
        full = {row: (raw.copy(), valid.copy()) for row, raw, valid in strips}
        n = grid.shape[0]
        for subset in ([n - 1], list(range(1, n, 3)), list(range(n // 2, n))):
            got = [(row, raw, valid) for row, raw, valid in iter_row_strips(reader, grid, subset)]
            assert [row for row, _, _ in got] == subset
            for row, raw, valid in got:
                np.testing.assert_array_equal(raw, full[row][0])
                np.testing.assert_array_equal(valid, full[row][1])


@pytest.mark.parametrize("stride", [64, 16, 13])
def test_row_buffer_holds_a_strip_and_the_block_rows_covering_it(raster, stride: int) -> None:
    """Aligned tiles need no rows beyond their own; any stride, at most one extra block row."""
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        block_rows = reader.info.block_shape[0]
        windows = [grid.row_window(row) for row in range(grid.shape[0])]
        spans = [(w.row_off, w.row_end) for w in (source_window(w, HEIGHT, WIDTH) for w in windows)]
        held = RowBuffer(reader, spans).raw.shape[1]
    if stride == TILE:  # tiles start on block rows (32 or 8 divide 64)
        assert held == TILE
    else:
        assert TILE <= held < TILE + block_rows


@pytest.mark.parametrize("channels_last", [False, True])
def test_small_raster_and_one_pixel_raster(make_tif, channels_last: bool) -> None:
    """A raster smaller than one tile is one cell whose tile mirrors the whole raster."""
    for shape in [(20, 30), (1, 1), (1, 9)]:
        array = (np.arange(3 * shape[0] * shape[1]).reshape(3, *shape) + 1).astype("uint16")
        path = make_tif(f"small_{shape[0]}x{shape[1]}.tif", array, tiled=False, blocksize=1)
        grid = TileGrid(*shape, tile_size=TILE, stride=32)
        with RasterReader(path) as reader:
            batches = collect(reader, grid, batch_size=8, channels_last=channels_last)
        data = np.concatenate([b.data for b in batches])
        assert data.shape == (len(grid), 3, TILE, TILE)
        pad = TILE + 1
        padded = symmetric(array.astype(np.float32), pad)
        for tile, got in zip(grid, data, strict=True):
            np.testing.assert_array_equal(got, cut(padded, pad, tile.window))
        assert np.all(np.concatenate([b.valid_fraction for b in batches]) == 1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [64, 13])  # (stride 16 happens to be exact at 200x150)
def test_edge_tiles_mirror_the_raster_like_numpy(make_tif, stride: int, channels_last) -> None:
    height, width = 200, 150
    array = scene(height, width)
    array[array == 0] = 7  # all valid: only the mirroring is under test
    path = make_tif("edge.tif", array, nodata=0, tiled=True, blocksize=32)
    grid = TileGrid(height, width, tile_size=TILE, stride=stride)
    pad = TILE + 1
    padded = symmetric(array.astype(np.float32), pad)
    with RasterReader(path) as reader:
        batches = collect(reader, grid, batch_size=64, channels_last=channels_last)
    data = np.concatenate([b.data for b in batches])
    expected = np.stack([cut(padded, pad, t.window) for t in grid])
    np.testing.assert_array_equal(data, expected)


@pytest.mark.parametrize("stride", [64, 16])
def test_stream_and_reader_agree_on_a_200x150_raster(make_tif, stride: int) -> None:
    array = scene(200, 150)
    path = make_tif("agree.tif", array, nodata=0, tiled=True, blocksize=32)
    grid = TileGrid(200, 150, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        data = np.concatenate([b.data for b in collect(reader, grid, batch_size=64)])
        for tile, got in zip(grid, data, strict=True):
            raw, valid = reader.read(tile.window)
            np.testing.assert_array_equal(got, np.where(valid[None], raw, FILL[:, None, None]))


def _channels_last(data: np.ndarray) -> bool:
    """Whether ``(n, C, T, T)`` data is band-interleaved in memory: bands the fastest axis."""
    return np.moveaxis(data, 1, -1).flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("stride", STRIDES)
def test_channels_last_batches_hold_the_same_tiles(raster, stride: int) -> None:
    """Band-interleaved batches (read so by GDAL) equal the band-by-band ones, value for value.

    Batches of 7 join pieces of two rows; stride 13 on 8-row blocks makes the row buffer drop
    rows it still overlaps.
    """
    path, _ = raster
    grid = TileGrid(HEIGHT, WIDTH, tile_size=TILE, stride=stride)
    with RasterReader(path) as reader:
        plain = list(iter_batches(reader, grid, FILL, 7))
    with RasterReader(path) as reader:
        interleaved = list(iter_batches(reader, grid, FILL, 7, channels_last=True))
    assert len(plain) == len(interleaved)
    for a, b in zip(plain, interleaved, strict=True):
        assert _channels_last(b.data) and not _channels_last(a.data)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_array_equal(a.valid_fraction, b.valid_fraction)
        np.testing.assert_array_equal(a.data, b.data)


def test_channels_last_batches_apply_scale_and_offset(make_tif) -> None:
    array = scene(100, 90)
    path = make_tif("scaled.tif", array, nodata=0, scales=[0.5, 2.0, 1e-4], offsets=[1, 0, -3])
    grid = TileGrid(100, 90, tile_size=TILE, stride=32)
    with RasterReader(path) as reader:
        plain = np.concatenate([b.data for b in iter_batches(reader, grid, FILL, 5)])
    with RasterReader(path) as reader:
        batches = list(iter_batches(reader, grid, FILL, 5, channels_last=True))
    assert all(_channels_last(b.data) for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.data for b in batches]), plain)


def test_row_buffer_drops_rows_without_losing_the_kept_ones(make_tif) -> None:
    """Kept rows move up in steps no longer than the dropped part, in both layouts."""
    array = scene(120, 20)
    path = make_tif("rows.tif", array, tiled=False, blocksize=4)
    for channels_last in (False, True):
        with RasterReader(path) as reader:
            buffer = RowBuffer(reader, [(0, 50), (3, 53), (47, 97)], channels_last)
            for r0, r1 in [(0, 50), (3, 53), (47, 97)]:  # drops 3 rows, then 44 of 50
                raw, valid = buffer.rows(r0, r1)
                np.testing.assert_array_equal(raw, array[:, r0:r1])
                assert valid.all()


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_channels_last_batches_of_float_and_signed_rasters(make_tif, dtype: str) -> None:
    """NaN nodata (float) and negative values (int8) come through interleaving unchanged."""
    array = scene(90, 100).astype(dtype if dtype != "int8" else "int16")
    if dtype == "float32":
        array[0, 10:20, 10:20] = np.nan
        nodata = float("nan")
    else:
        array = (array % 200 - 100).astype("int8")
        nodata = None
    path = make_tif(f"{dtype}.tif", array, nodata=nodata)
    grid = TileGrid(90, 100, tile_size=TILE, stride=32)
    with RasterReader(path) as reader:
        plain = np.concatenate([b.data for b in collect(reader, grid, 4)])
    with RasterReader(path) as reader:
        interleaved = collect(reader, grid, 4, channels_last=True)
    assert all(_channels_last(b.data) for b in interleaved)
    np.testing.assert_array_equal(np.concatenate([b.data for b in interleaved]), plain)
    assert not np.isnan(plain).any()
