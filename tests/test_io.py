"""Raster input and output (DESIGN: "One rule for preprocessing", "The prediction grid")."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import RasterioError

from georaster_quant import errors
from georaster_quant import io as gio
from georaster_quant.io import (
    RasterReader,
    atomic_path,
    check_output_path,
    read_info,
    select_bands,
    write_raster,
)
from georaster_quant.tiling import Window


def ramp(bands: int, height: int, width: int, dtype: str = "uint16") -> np.ndarray:
    """Distinct values per pixel and band (no zeros, so 0 can be a nodata value)."""
    values = np.arange(bands * height * width).reshape(bands, height, width) % 60_000 + 1
    return values.astype(dtype)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- reading ----------------------------------------------------------------------------------


def test_read_returns_float32_bands_and_bool_mask(make_tif) -> None:
    array = ramp(3, 40, 50, "uint16")
    path = make_tif("a.tif", array)
    with RasterReader(path) as reader:
        info = reader.info
        assert (info.height, info.width, info.count) == (40, 50, 3)
        assert info.bands == (1, 2, 3) and info.dtype == "uint16"
        assert info.crs == "EPSG:32633" and info.res == (10.0, 10.0)
        assert not (info.has_alpha or info.has_mask or info.scaled)
        data, valid = reader.read(Window(5, 7, 20, 30))
    assert data.dtype == np.float32 and data.shape == (3, 20, 30)
    assert valid.dtype == np.bool_ and valid.shape == (20, 30)
    np.testing.assert_array_equal(data, array[:, 5:25, 7:37].astype(np.float32))
    assert valid.all()


def test_read_all_and_read_info(make_tif) -> None:
    array = ramp(2, 9, 11, "int16")
    path = make_tif("b.tif", array, nodata=-1)
    info = read_info(path)
    assert info.path.endswith("b.tif") and info.nodata == -1 and info.count == 2
    with RasterReader(path) as reader:
        data, valid = reader.read_all()
    np.testing.assert_array_equal(data, array.astype(np.float32))
    assert valid.shape == (9, 11) and valid.all()


def test_nodata_pixels_are_invalid_in_every_band(make_tif) -> None:
    array = ramp(3, 20, 20, "uint16")
    array[0, 2, 3] = 0  # nodata in one band is enough
    array[:, 10, 11] = 0
    path = make_tif("nd.tif", array, nodata=0)
    with RasterReader(path) as reader:
        data, valid = reader.read_all()
    expected = np.ones((20, 20), dtype=bool)
    expected[2, 3] = expected[10, 11] = False
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(data, array.astype(np.float32))  # values are untouched


def test_nan_pixels_are_invalid_in_float_rasters(make_tif) -> None:
    array = ramp(2, 16, 16, "float32")
    array[1, 4, 5] = np.nan
    array[0, 0, 0] = -9999
    path = make_tif("nan.tif", array, nodata=-9999)
    with RasterReader(path) as reader:
        _, valid = reader.read_all()
    assert not valid[4, 5] and not valid[0, 0]
    assert valid.sum() == 16 * 16 - 2


def test_nan_nodata_tag_masks_nan(make_tif) -> None:
    array = ramp(1, 8, 8, "float32")
    array[0, 3, 3] = np.nan
    path = make_tif("nan_tag.tif", array, nodata=float("nan"))
    with RasterReader(path) as reader:
        _, valid = reader.read_all()
    assert valid.sum() == 63 and not valid[3, 3]


def test_alpha_band_is_a_mask_not_data(make_tif) -> None:
    array = ramp(3, 24, 24, "uint8") % 200 + 1
    alpha = np.full((24, 24), 255, dtype=np.uint8)
    alpha[:5, :] = 0
    path = make_tif("alpha.tif", array.astype("uint8"), alpha=alpha)
    with rasterio.open(path) as ds:
        assert ds.count == 4  # the file really has 4 bands, the last one alpha
    with RasterReader(path) as reader:
        assert reader.info.bands == (1, 2, 3) and reader.info.count == 3
        assert reader.info.has_alpha
        data, valid = reader.read_all()
        with pytest.raises(errors.BandMismatchError):
            RasterReader(path, bands=[1, 2, 4])  # the alpha band is not a data band
    assert data.shape == (3, 24, 24)
    np.testing.assert_array_equal(data, array.astype(np.float32))
    np.testing.assert_array_equal(valid, alpha > 0)


def test_gdal_internal_mask_is_honoured(make_tif) -> None:
    array = ramp(2, 32, 32, "uint16")
    mask = np.ones((32, 32), dtype=bool)
    mask[10:20, 5:9] = False
    path = make_tif("mask.tif", array, mask=mask)
    with rasterio.open(path) as ds:  # the mask is GDAL's per-dataset mask
        assert rasterio.enums.MaskFlags.per_dataset in ds.mask_flag_enums[0]
    with RasterReader(path) as reader:
        assert reader.info.has_mask
        data, valid = reader.read_all()
        part, part_valid = reader.read(Window(8, 4, 8, 8))
    np.testing.assert_array_equal(valid, mask)
    np.testing.assert_array_equal(data, array.astype(np.float32))
    np.testing.assert_array_equal(part_valid, mask[8:16, 4:12])


def test_scale_and_offset_are_applied(make_tif) -> None:
    array = ramp(2, 10, 12, "uint16")
    path = make_tif("scaled.tif", array, scales=[1e-4, 0.5], offsets=[-0.1, 3.0])
    with RasterReader(path) as reader:
        assert reader.info.scaled
        data, valid = reader.read_all()
    expected = np.stack([array[0] * 1e-4 - 0.1, array[1] * 0.5 + 3.0])
    assert data.dtype == np.float32
    np.testing.assert_allclose(data, expected, rtol=1e-6, atol=1e-7)
    assert valid.all()


def test_scale_applies_to_the_selected_bands_in_their_order(make_tif) -> None:
    array = ramp(3, 6, 6, "uint16")
    path = make_tif("scaled3.tif", array, scales=[1.0, 2.0, 3.0], offsets=[0.0, 10.0, 20.0])
    with RasterReader(path, bands=[3, 1]) as reader:
        data, _ = reader.read_all()
    np.testing.assert_allclose(data[0], array[2] * 3.0 + 20.0)
    np.testing.assert_allclose(data[1], array[0].astype(np.float32))


# Windows whose outside part is no deeper than their inside part (the common case).
SHALLOW_WINDOWS = [
    Window(-3, -5, 20, 20),  # top-left corner
    Window(22, 30, 15, 16),  # bottom-right corner
    Window(-8, 10, 16, 8),  # top edge
    Window(-10, -10, 50, 60),  # all of the raster plus a margin on every side
]


@pytest.mark.parametrize("window", SHALLOW_WINDOWS, ids=str)
@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
def test_windows_outside_the_raster_are_mirrored(make_tif, window: Window, tiled: bool) -> None:
    height, width = 30, 40
    array = ramp(2, height, width, "uint16")
    array[:, 0, 0] = 0  # a nodata pixel in the corner is mirrored in the mask too
    path = make_tif("m.tif", array, nodata=0, tiled=tiled, blocksize=16)
    pad = 60
    padded = np.pad(array, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    padded_valid = np.pad(array[0] != 0, pad, mode="symmetric")
    rows, cols = window.toslices()
    rows, cols = slice(rows.start + pad, rows.stop + pad), slice(cols.start + pad, cols.stop + pad)
    with RasterReader(path) as reader:
        data, valid = reader.read(window)
    assert data.shape == (2, window.height, window.width)
    np.testing.assert_array_equal(data, padded[:, rows, cols].astype(np.float32))
    np.testing.assert_array_equal(valid, padded_valid[rows, cols])


@pytest.mark.parametrize(
    "window",
    [
        Window(0, 35, 30, 64),  # 5 columns inside, 59 outside on the right
        Window(29, 0, 64, 40),  # 1 row inside, 63 outside at the bottom
    ],
    ids=str,
)
def test_windows_far_outside_the_raster_are_mirrored_like_numpy(make_tif, window: Window) -> None:
    height, width = 30, 40
    array = ramp(1, height, width, "uint16")
    path = make_tif("far.tif", array)
    pad = 70
    padded = np.pad(array, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    rows, cols = window.toslices()
    expected = padded[:, rows.start + pad : rows.stop + pad, cols.start + pad : cols.stop + pad]
    with RasterReader(path) as reader:
        data, _ = reader.read(window)
    np.testing.assert_array_equal(data, expected.astype(np.float32))


def test_window_wholly_outside_is_mirrored_too(make_tif) -> None:
    array = ramp(1, 10, 10)
    path = make_tif("o.tif", array)
    padded = np.pad(array, ((0, 0), (25, 25), (25, 25)), mode="symmetric")
    with RasterReader(path) as reader:
        data, valid = reader.read(Window(20, 20, 5, 5))
    np.testing.assert_array_equal(data, padded[:, 45:50, 45:50].astype(np.float32))
    assert valid.shape == (5, 5)


@pytest.mark.parametrize("shape", [(10, 1), (1, 10), (1, 1)], ids=str)
def test_one_pixel_wide_rasters_read_as_tiles(make_tif, shape: tuple[int, int]) -> None:
    height, width = shape
    array = ramp(2, height, width, "uint16")
    path = make_tif("thin.tif", array, tiled=False, blocksize=1)
    window = Window(-8, -8, 16 + height, 16 + width)
    with RasterReader(path) as reader:
        data, valid = reader.read(window)
    expected = np.pad(array, ((0, 0), (8, 8), (8, 8)), mode="symmetric").astype(np.float32)
    np.testing.assert_array_equal(data, expected)
    assert valid.shape == expected.shape[1:] and valid.all()


def test_raster_smaller_than_a_tile(make_tif) -> None:
    array = ramp(3, 20, 30, "uint8")
    path = make_tif("small.tif", array)
    window = Window(-17, -17, 64, 64)  # a stride-30 tile's halo on every side
    with RasterReader(path) as reader:
        data, valid = reader.read(window)
    expected = np.pad(array, ((0, 0), (17, 27), (17, 17)), mode="symmetric").astype(np.float32)
    assert data.shape == (3, 64, 64)
    np.testing.assert_array_equal(data, expected)
    assert valid.all()


# --- input errors -----------------------------------------------------------------------------


def test_missing_file_is_a_raster_input_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "scene.tif"
    with pytest.raises(errors.RasterInputError) as info:
        RasterReader(missing)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, errors.GeoRasterQuantError)
    assert str(missing) in str(info.value)
    with pytest.raises(errors.RasterInputError):
        read_info(missing)


def test_text_file_named_tif_is_a_raster_input_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tif"
    fake.write_text("this is not a GeoTIFF\n")
    with pytest.raises(errors.RasterInputError) as info:
        RasterReader(fake)
    assert str(fake) in str(info.value)
    assert isinstance(info.value, OSError)


def test_nonexistent_band_is_a_band_mismatch(make_tif) -> None:
    path = make_tif("3b.tif", ramp(3, 4, 4))
    with pytest.raises(errors.BandMismatchError) as info:
        RasterReader(path, bands=[1, 5])
    assert isinstance(info.value, ValueError)
    assert "5" in str(info.value)


# --- band selection ---------------------------------------------------------------------------


@pytest.fixture
def named_info(make_tif):
    path = make_tif("named.tif", ramp(4, 4, 4), descriptions=["Blue", "Green", "Red", "NIR"])
    return read_info(path)


@pytest.fixture
def unnamed_info(make_tif):
    return read_info(make_tif("unnamed.tif", ramp(4, 4, 4)))


def test_select_bands_explicit_list_wins(named_info) -> None:
    assert select_bands(named_info, ["blue", "green", "red", "nir"], explicit=[3, 2, 1, 4]) == [
        3,
        2,
        1,
        4,
    ]


def test_select_bands_matches_descriptions_in_model_order(named_info) -> None:
    assert named_info.band_names == ("Blue", "Green", "Red", "NIR")
    assert select_bands(named_info, ["nir", "red", "green", "blue"]) == [4, 3, 2, 1]
    assert select_bands(named_info, ["red", "nir"]) == [3, 4]  # a named subset is fine


def test_select_bands_falls_back_to_raster_order(unnamed_info, named_info) -> None:
    assert select_bands(unnamed_info, ["a", "b", "c", "d"]) == [1, 2, 3, 4]
    assert select_bands(named_info, [None, None, None, None]) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "model_bands,explicit",
    [
        (["b1", "b2", "b3"], None),  # 4 raster bands, 3 model bands, nothing to match
        (["b1", "b2", "b3", "b4", "b5"], None),
        (["b1", "b2", "b3", "b4"], [1, 2, 3]),  # explicit list of the wrong length
        (["b1", "b2"], [1, 7]),  # explicit band that does not exist
    ],
)
def test_select_bands_mismatch_is_an_error(unnamed_info, model_bands, explicit) -> None:
    with pytest.raises(errors.BandMismatchError) as info:
        select_bands(unnamed_info, model_bands, explicit=explicit)
    assert isinstance(info.value, ValueError)
    assert unnamed_info.path in str(info.value)


# --- output paths -----------------------------------------------------------------------------


def test_check_output_path_accepts_a_new_file(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "map.tif") == tmp_path / "map.tif"


def test_check_output_path_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(errors.OutputPathError) as info:
        check_output_path(tmp_path / "missing" / "map.tif")
    assert isinstance(info.value, OSError)
    assert "missing" in str(info.value)


def test_check_output_path_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(errors.OutputPathError, match="blocker"):
        check_output_path(blocker / "map.tif")


def test_check_output_path_existing_file_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    out.write_bytes(b"old")
    with pytest.raises(errors.OutputPathError, match="overwrite"):
        check_output_path(out)
    assert check_output_path(out, overwrite=True) == out


def test_atomic_path_failure_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "result.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(out) as tmp:
            assert tmp.parent == tmp_path and tmp != out
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert leftovers(tmp_path, set()) == []


def test_atomic_path_never_replaces_a_folder_with_a_file(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    (out / "keep.txt").parent.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(errors.OutputPathError, match="folder"):
        with atomic_path(out) as tmp:
            tmp.write_text("{}")
    assert (out / "keep.txt").read_text() == "precious"
    assert leftovers(tmp_path, {"result.json"}) == []


@pytest.mark.parametrize("fails", ["move_in", "interrupt_after_move_aside"])
def test_replacing_a_folder_keeps_the_old_one_whole_until_the_new_is_in(
    tmp_path: Path, monkeypatch, fails: str
) -> None:
    """The old folder is renamed aside, not deleted, until the new one is in place."""
    import georaster_quant.io as io_module

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "bundle.json").write_text("old")
    (out / "weights.pt").write_text("old weights")
    real = os.replace
    calls = []

    def replace(src, dst):  # the OS rename, with one injected failure
        calls.append(src)
        if len(calls) == 2 and fails == "move_in":
            raise OSError("injected: the new folder cannot be moved in")
        real(src, dst)
        if len(calls) == 1 and fails == "interrupt_after_move_aside":
            raise KeyboardInterrupt

    monkeypatch.setattr(io_module.os, "replace", replace)
    with pytest.raises((OSError, KeyboardInterrupt)):
        with atomic_path(out, marker="bundle.json") as tmp:
            tmp.mkdir()
            (tmp / "bundle.json").write_text("new")
    monkeypatch.setattr(io_module.os, "replace", real)
    assert (out / "weights.pt").read_text() == "old weights"  # whole, at its place
    assert leftovers(tmp_path, {"bundle"}) == []


def test_atomic_path_failure_keeps_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "result.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert leftovers(tmp_path, {"result.bin"}) == []


def test_atomic_path_success_replaces_file_and_folder(tmp_path: Path) -> None:
    out = tmp_path / "result.bin"
    out.write_bytes(b"old")
    with atomic_path(out) as tmp:
        assert out.read_bytes() == b"old"  # untouched until the body succeeds
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "stale.txt").write_text("stale")
    with pytest.raises(errors.OutputPathError, match="did not write"):  # no marker: not ours
        with atomic_path(folder, marker="bundle.json") as tmp:
            tmp.mkdir()
            (tmp / "bundle.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["stale.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_path(empty, marker="bundle.json") as tmp:  # an empty folder holds nothing to lose
        tmp.mkdir()
    leftovers_ok = {"result.bin", "bundle", "empty"}
    (folder / "bundle.json").write_text("{}")  # now it is one of ours
    with atomic_path(folder, marker="bundle.json") as tmp:
        tmp.mkdir()
        (tmp / "bundle.json").write_text("{}")
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json"]
    assert leftovers(tmp_path, leftovers_ok) == []


# --- writing ----------------------------------------------------------------------------------

TRANSFORM = Affine(20.0, 0.0, 300_000.0, 0.0, -20.0, 6_000_000.0)


def _write(path: Path, array: np.ndarray, **kwargs) -> None:
    bands, height, width = array.shape
    with write_raster(
        path,
        width=width,
        height=height,
        count=bands,
        dtype=array.dtype.name,
        crs="EPSG:32633",
        transform=TRANSFORM,
        nodata=255,
        blocksize=32,
        **kwargs,
    ) as writer:
        for r0 in range(0, height, 32):  # one window at a time, like the runner
            window = Window(r0, 0, min(32, height - r0), width)
            writer[window] = array[:, window.toslices()[0], :]
        writer.set_band_names([f"band{i}" for i in range(1, bands + 1)])
        writer.update_tags(STRIDE=16)


def test_write_raster_writes_a_tiled_deflate_geotiff(tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    array = (np.arange(2 * 70 * 90).reshape(2, 70, 90) % 250).astype(np.uint8)
    _write(out, array)
    with rasterio.open(out) as ds:
        assert ds.driver == "GTiff"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (32, 32)
        assert ds.compression == rasterio.enums.Compression.deflate
        assert ds.crs.to_epsg() == 32633 and ds.transform == TRANSFORM
        assert ds.nodata == 255 and ds.descriptions == ("band1", "band2")
        assert ds.tags()["STRIDE"] == "16"
        np.testing.assert_array_equal(ds.read(), array)
    assert leftovers(tmp_path, {"map.tif"}) == []


def test_write_raster_cog(tmp_path: Path) -> None:
    out = tmp_path / "map_cog.tif"
    array = (np.arange(1 * 300 * 260).reshape(1, 300, 260) % 7).astype(np.uint8)
    _write(out, array, cog=True, overview_resampling="mode")
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.compression == rasterio.enums.Compression.deflate
        assert ds.profile["tiled"]
        np.testing.assert_array_equal(ds.read(), array)
        assert ds.overviews(1), "a COG of this size should carry overviews"
    assert leftovers(tmp_path, {"map_cog.tif"}) == []


@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
def test_write_raster_failure_leaves_nothing_at_the_path(tmp_path: Path, cog: bool) -> None:
    out = tmp_path / "map.tif"
    with pytest.raises(RuntimeError, match="inference failed"):
        with write_raster(
            out,
            width=40,
            height=40,
            count=1,
            dtype="uint8",
            crs="EPSG:32633",
            transform=TRANSFORM,
            nodata=255,
            blocksize=16,
            cog=cog,
        ) as writer:
            writer[Window(0, 0, 16, 40)] = np.zeros((16, 40), dtype=np.uint8)
            raise RuntimeError("inference failed")
    assert not out.exists()
    assert leftovers(tmp_path, set()) == []


# --- the shared real rasters (MANIFEST.tsv) ---------------------------------------------------


def test_naip_four_bands_all_valid(shared_data: Path) -> None:
    path = shared_data / "naip_rgbn_sub.tif"
    with RasterReader(path) as reader:
        assert reader.info.count == 4 and reader.info.dtype == "uint8"
        assert reader.info.nodata is None
        data, valid = reader.read_all()
    with rasterio.open(path) as ds:
        raw = ds.read()
    assert data.shape == (4, 300, 300) and data.dtype == np.float32
    assert valid.all()
    np.testing.assert_array_equal(data, raw.astype(np.float32))


def test_rgb_byte_nodata_collar(shared_data: Path) -> None:
    path = shared_data / "rgb_byte.tif"
    with RasterReader(path) as reader:
        assert reader.info.nodata == 0 and reader.info.count == 3
        data, valid = reader.read_all()
        corner, corner_valid = reader.read(Window(-32, -32, 64, 64))
    invalid = 1.0 - valid.mean()
    assert 0.2 < invalid < 0.5
    assert np.all(np.any(data[:, ~valid] == 0, axis=0))  # every invalid pixel has a 0 band
    assert np.all(np.all(data[:, valid] != 0, axis=0))
    assert corner.shape == (3, 64, 64) and not corner_valid.all()  # the collar is in the corner


def test_terratorch_ten_band_float(shared_data: Path) -> None:
    path = shared_data / "terratorch_10band_float32.tif"
    with RasterReader(path) as reader:
        info = reader.info
        assert info.count == 10 and info.dtype == "float32" and info.nodata == -9999
        data, valid = reader.read(Window(100, 100, 64, 64))
    with rasterio.open(path) as ds:
        raw = ds.read(window=rasterio.windows.Window(100, 100, 64, 64))
    assert data.shape == (10, 64, 64)
    np.testing.assert_array_equal(data, raw)
    np.testing.assert_array_equal(valid, ~np.any((raw == -9999) | np.isnan(raw), axis=0))


def test_all_nodata_every_pixel_invalid_and_bands_by_name(shared_data: Path) -> None:
    path = shared_data / "all_nodata.tif"
    with RasterReader(path) as reader:
        info = reader.info
        _, valid = reader.read_all()
    assert not valid.any()
    assert info.band_names == ("blue", "green", "red", "nir")
    assert select_bands(info, ["nir", "red", "green", "blue"]) == [4, 3, 2, 1]
    assert select_bands(info, ["RED", "Green", "Blue", "NIR"]) == [3, 2, 1, 4]
    with pytest.raises(errors.BandMismatchError):
        select_bands(info, ["b1", "b2", "b3"])


def test_a_stopped_run_does_not_sleep_out_a_retry(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "remote_like.tif"
    _write(path, ramp(2, 64, 64).astype(np.uint8))
    monkeypatch.setattr(gio, "read_retries", lambda _path: (3, 30.0))  # as for an HTTP input

    def unavailable(*_args: object) -> None:
        raise RasterioError("HTTP response code: 503")

    with RasterReader(path) as reader:
        monkeypatch.setattr(reader, "_read_from", unavailable)
        threading.Timer(0.2, reader.cancel.set).start()  # the run stops meanwhile
        start = time.monotonic()
        with pytest.raises(errors.RasterInputError, match="not retried, the run was stopped"):
            reader.read_raw(Window(0, 0, 8, 8))
    assert time.monotonic() - start < 10  # not the 30 s backoff


def test_class_names_from_a_sloppy_tag(make_tif) -> None:
    labels = make_tif("labels.tif", np.zeros((8, 8), np.uint8))
    with rasterio.open(labels, "r+") as dst:
        dst.update_tags(CLASSES="water, ,grassland,,")
    with RasterReader(labels) as reader:
        names, colours = reader.class_table()
    assert names == ["water", "class_1", "grassland"] and len(colours) == 3
