"""Lazy DataArray prediction with dask: the same cells as the streaming runner, georeferenced."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from synth_helpers import run_cli

import georaster_quant.accessor  # noqa: F401 - registers .gq
from georaster_quant import backend as backend_module
from georaster_quant.backend import open_backend
from georaster_quant.bundle import Bundle
from georaster_quant.errors import (
    BandMismatchError,
    ConfigError,
    GeoRasterQuantError,
    RasterContractError,
    RasterInputError,
    RasterMismatchWarning,
)
from georaster_quant.lazy import predict_dataarray
from georaster_quant.predict import NODATA_CLASS, disagreement_map, predict_grid
from georaster_quant.runner import PredictOptions, predict_raster
from georaster_quant.synth import SceneSpec, generate_scene

pytest_plugins = ["conftest_synth"]


@pytest.fixture(scope="module")
def holed_scene(tmp_path_factory):
    """An unseen 300x430 scene with a nodata hole and a scale factor, tiled in 64 px blocks."""
    scene, _ = generate_scene(
        tmp_path_factory.mktemp("lazy"), SceneSpec(430, 300, 4, 77), progress=False
    )
    with rasterio.open(scene) as src:
        array, profile = src.read(), src.profile
    array[:, 40:170, 90:260] = 0
    out = scene.with_name("holed.tif")
    profile.update(nodata=0, blockxsize=64, blockysize=64, tiled=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(array)
        dst.scales = [1e-4] * 4
    return out


def runner_map(bundle, scene, tmp_path, stride, probabilities=False):
    out = tmp_path / f"ref_{stride}.tif"
    opts = PredictOptions(stride=stride, probabilities=probabilities, overwrite=True)
    predict_raster(open_backend(bundle), scene, out, opts)
    with rasterio.open(out) as src:
        return src.read(), src.transform, src.crs


@pytest.mark.parametrize(
    ("stride", "chunks"), [(64, None), (64, 150), (16, 100), (21, 200)], ids=str
)
def test_lazy_cells_equal_the_runner(trained_bundle, holed_scene, tmp_path, stride, chunks):
    ref, transform, crs = runner_map(trained_bundle, holed_scene, tmp_path, stride, True)
    da = rioxarray.open_rasterio(holed_scene, chunks={"y": 128, "x": 96})
    ds = predict_dataarray(da, trained_bundle, stride=stride, chunks=chunks, probabilities=True)
    assert ds["class"].chunks is not None  # lazy until asked
    if chunks:
        assert len(ds["class"].chunks[0]) > 1 and len(ds["class"].chunks[1]) > 1
    ds = ds.compute()
    np.testing.assert_array_equal(ds["class"].values, ref[0])
    np.testing.assert_array_equal(ds["confidence"].values, ref[1])
    np.testing.assert_array_equal(ds["probability"].values, ref[2:])
    assert (ds["class"].values == NODATA_CLASS).any()  # the hole
    assert ds.rio.transform() == transform
    assert ds.rio.crs == crs
    assert list(ds["probability"].class_name.values) == ds["class"].attrs["class_names"]


def test_numpy_backed_array_and_accessor(trained_bundle, small_scene, tmp_path):
    ref, _, _ = runner_map(trained_bundle, small_scene[0], tmp_path, 32)
    da = rioxarray.open_rasterio(small_scene[0]).load()  # numpy-backed
    ds = da.gq.predict(trained_bundle, stride=32, chunks=128)
    np.testing.assert_array_equal(ds["class"].values, ref[0])
    np.testing.assert_array_equal(ds["confidence"].values, ref[1])
    # A loaded Bundle goes wherever its folder does.
    bundle = Bundle(trained_bundle)
    again = da.gq.predict(bundle, stride=32, chunks=128)
    np.testing.assert_array_equal(again["class"].values, ref[0])
    colors = again["class"].attrs["class_colors"]
    assert colors[0] == "#{:02x}{:02x}{:02x}".format(*bundle.meta.classes[0].color)
    assert all(len(c) == 7 and c.startswith("#") for c in colors)
    # netCDF attributes must be scalars or 1-D: the Dataset can be written with to_netcdf.
    for var in again.data_vars.values():
        assert all(np.ndim(v) <= 1 for v in var.attrs.values()), var.attrs


def test_to_raster_writes_the_cli_map(capsys, trained_bundle, small_scene, tmp_path):
    cli_map = tmp_path / "cli.tif"
    code, _, err = run_cli(
        capsys, "predict", "--weights", trained_bundle, "--image", small_scene[0],
        "--output", cli_map, "--stride", "16", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    ds = rioxarray.open_rasterio(small_scene[0], chunks=256).gq.predict(trained_bundle, stride=16)
    ds["class"].rio.to_raster(tmp_path / "lazy.tif")
    with rasterio.open(cli_map) as a, rasterio.open(tmp_path / "lazy.tif") as b:
        assert b.transform == a.transform and b.crs == a.crs and b.nodata == NODATA_CLASS
        np.testing.assert_array_equal(b.read(1), a.read(1))


@pytest.mark.parametrize("shape", [(1, 1), (1, 70), (5, 3), (63, 65)], ids=str)
def test_tiny_rasters_equal_predict_grid(trained_bundle, make_tif, shape):
    rng = np.random.default_rng(sum(shape))
    array = rng.integers(300, 3000, (4, *shape)).astype("uint16")
    path = make_tif("tiny.tif", array)
    model = open_backend(trained_bundle)
    for stride in (64, 16):
        cells = predict_grid(model, path, stride=stride)
        da = rioxarray.open_rasterio(path)
        ds = predict_dataarray(da, trained_bundle, stride=stride).compute()
        np.testing.assert_array_equal(ds["class"].values, cells.classes)


def test_model_loads_once_per_process_and_only_on_compute(bundle_copy, small_scene):
    da = rioxarray.open_rasterio(small_scene[0], chunks=128)
    before = backend_module.LOADS
    ds = predict_dataarray(da, bundle_copy, stride=32, chunks=128)
    assert backend_module.LOADS == before  # building the graph loads nothing
    ds.compute()
    ds.compute()
    assert backend_module.LOADS == before + 1  # many blocks, two computes, one load


def test_band_selection_and_mismatch(trained_bundle, small_scene, three_band_scene):
    da = rioxarray.open_rasterio(small_scene[0])
    with pytest.raises(BandMismatchError, match="takes 4"):
        predict_dataarray(rioxarray.open_rasterio(three_band_scene[0]), trained_bundle)
    with pytest.raises(BandMismatchError, match=r"band\(s\) \[9\]"):
        predict_dataarray(da, trained_bundle, bands=[1, 2, 3, 9])
    reordered = da.isel(band=[3, 2, 1, 0])
    a = predict_dataarray(da, trained_bundle).compute()
    b = predict_dataarray(reordered, trained_bundle, bands=[4, 3, 2, 1]).compute()
    np.testing.assert_array_equal(a["class"].values, b["class"].values)


def test_disagreement_map_lazy_and_eager(trained_bundle, int8_bundle, holed_scene):
    da = rioxarray.open_rasterio(holed_scene, chunks=128)
    fp32 = predict_dataarray(da, trained_bundle, stride=16)
    int8 = predict_dataarray(da, int8_bundle, stride=16)
    diff = disagreement_map(fp32, int8)
    assert isinstance(diff, xr.DataArray) and diff.chunks is not None
    a, b = fp32["class"].values, int8["class"].values
    expected = np.where((a == 255) | (b == 255), 255, (a != b).astype(np.uint8))
    np.testing.assert_array_equal(diff.values, expected)
    np.testing.assert_array_equal(disagreement_map(a, b), expected)  # numpy in, numpy out
    assert diff.dtype == np.uint8 and (diff.values == 255).any() and (diff.values == 0).any()
    assert diff.rio.transform() == fp32.rio.transform()


def test_two_lazy_maps_computed_together_stay_apart(trained_bundle, int8_bundle, holed_scene):
    import dask

    da = rioxarray.open_rasterio(holed_scene, chunks=128)
    fp32 = predict_dataarray(da, trained_bundle, stride=16, probabilities=True)
    int8 = predict_dataarray(da, int8_bundle, stride=16, probabilities=True)
    coarse = predict_dataarray(da, int8_bundle, stride=32)
    assert len({fp32["class"].data.name, int8["class"].data.name, coarse["class"].data.name}) == 3
    together = dask.compute(fp32["probability"], int8["probability"], coarse["class"])
    alone = [fp32["probability"].values, int8["probability"].values, coarse["class"].values]
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_array_equal(t.values, a)
    assert not np.array_equal(alone[0], alone[1])  # FP32 and INT8 probabilities differ
    with pytest.raises(RasterContractError, match="different grids"):
        disagreement_map(fp32, coarse)


def test_stride_and_chunks_must_be_positive(trained_bundle, small_scene):
    da = rioxarray.open_rasterio(small_scene[0], chunks=128)
    with pytest.raises(ConfigError, match="stride"):
        predict_dataarray(da, trained_bundle, stride=0)
    with pytest.raises(ConfigError, match="chunks"):
        predict_dataarray(da, trained_bundle, chunks=0)


def test_evaluate_report_writes_the_disagreement_raster(
    capsys, trained_bundle, int8_bundle, small_scene, tmp_path
):
    report = tmp_path / "report"
    code, _, err = run_cli(
        capsys, "evaluate", "--weights", trained_bundle, "--weights", int8_bundle,
        "--image", small_scene[0], "--labels", small_scene[1], "--stride", "16",
        "--report", report,
    )  # fmt: skip
    assert code == 0, err
    names = {p.name for p in report.iterdir()}
    assert {"index.html", "confusion_1.png", "confusion_2.png", "disagreement_1_vs_2.png"} <= names
    fp32 = predict_grid(open_backend(trained_bundle), small_scene[0], stride=16).classes
    int8 = predict_grid(open_backend(int8_bundle), small_scene[0], stride=16).classes
    with (
        rasterio.open(report / "disagreement_1_vs_2.tif") as src,
        rasterio.open(small_scene[0]) as scene,
    ):
        np.testing.assert_array_equal(src.read(1), disagreement_map(fp32, int8))
        assert src.crs == scene.crs
        assert src.transform == scene.transform * scene.transform.scale(16)


def test_disagreement_with_a_map_read_back_from_disk(trained_bundle, make_tif, tmp_path):
    # Coordinates computed two ways differ in the last bits; the grid is still one grid.
    from affine import Affine

    step = 0.000269494585236  # not a binary fraction
    pixels = np.random.default_rng(5).integers(300, 3000, (4, 200, 160)).astype("uint16")
    scene = make_tif(
        "wgs84.tif", pixels, transform=Affine(step, 0, 10, 0, -step, 45), crs="EPSG:4326"
    )
    da = rioxarray.open_rasterio(scene, chunks=64)
    lazy = predict_dataarray(da, trained_bundle, stride=16)
    path = tmp_path / "map.tif"
    lazy["class"].rio.to_raster(path)
    back = rioxarray.open_rasterio(path).squeeze("band", drop=True)
    diff = disagreement_map(lazy, back).values
    assert set(np.unique(diff)) <= {0, 255} and (diff == 0).any()


def test_lazy_keys_follow_nodata_attributes(trained_bundle, holed_scene):
    da = rioxarray.open_rasterio(holed_scene, chunks=128)
    a = predict_dataarray(da, trained_bundle, stride=32)
    b = predict_dataarray(da.rio.write_nodata(7), trained_bundle, stride=32)
    assert a["class"].data.name != b["class"].data.name


def test_georeferencing_follows_the_coordinates(trained_bundle, holed_scene, tmp_path):
    # A flip (south-up) and a decimation leave rioxarray's cached GeoTransform stale; the map
    # must follow the coordinates, as a file written from the same array would.
    da = rioxarray.open_rasterio(holed_scene, chunks=128)
    for name, view in {
        "south_up": da.isel(y=slice(None, None, -1)),
        "every_2nd": da.isel(y=slice(None, None, 2), x=slice(None, None, 2)),
    }.items():
        path = tmp_path / f"{name}.tif"
        view.rio.to_raster(path)
        ref, transform, _ = runner_map(trained_bundle, path, tmp_path, 16)
        ds = predict_dataarray(view, trained_bundle, stride=16)
        assert ds.rio.transform() == transform, name
        np.testing.assert_array_equal(ds["class"].values, ref[0])


def test_bands_follow_descriptions_and_per_band_scales(trained_bundle, small_scene, make_tif):
    da = rioxarray.open_rasterio(small_scene[0])
    expected = predict_dataarray(da, trained_bundle, stride=32).compute()["class"].values
    raw = da.values
    names = list(da.attrs["long_name"])
    order = [3, 0, 2, 1]  # the file's bands in another order, named
    scales, offsets = [2.0, 1.0, 4.0, 1.0], [0.0, 100.0, 0.0, -50.0]
    stored = np.stack([(raw[b] - offsets[i]) / scales[i] for i, b in enumerate(order)]).astype(
        "float32"
    )
    path = make_tif(
        "permuted.tif", stored, scales=scales, offsets=offsets,
        descriptions=[names[b] for b in order],
    )  # fmt: skip
    permuted = rioxarray.open_rasterio(path, chunks=128)
    assert "scales" in permuted.attrs  # rioxarray's form for scales that differ by band
    got = predict_dataarray(permuted, trained_bundle, stride=32)
    np.testing.assert_array_equal(got["class"].values, expected)
    # A selection that reorders the bands keeps xarray's old attributes; still matched,
    # also when the band numbers became floats.
    back = permuted.isel(band=[1, 3, 2, 0])
    for view in (back, back.assign_coords(band=back.band.astype(float))):
        got = predict_dataarray(view, trained_bundle, stride=32)
        np.testing.assert_array_equal(got["class"].values, expected)


def test_a_lazily_read_array_is_not_read_to_build_the_graph(
    trained_bundle, small_scene, monkeypatch
):
    from rioxarray._io import RasterioArrayWrapper

    reads = []
    real = RasterioArrayWrapper._getitem

    def counted(self, key):
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(RasterioArrayWrapper, "_getitem", counted)
    da = rioxarray.open_rasterio(small_scene[0])  # no chunks: xarray's lazy indexing
    ds = predict_dataarray(da, trained_bundle, stride=32, chunks=256)
    assert reads == []
    ref = predict_grid(open_backend(trained_bundle), small_scene[0], stride=32).classes
    np.testing.assert_array_equal(ds["class"].values, ref)
    assert len(reads) > 1  # read chunk by chunk


def test_chunks_follow_the_inputs_largest(trained_bundle):
    import dask.array as dsa

    side = 1024
    data = dsa.zeros((4, side, side), dtype="uint16", chunks=(4, 256, 256))
    da = xr.DataArray(data, dims=("band", "y", "x")).rio.write_crs("EPSG:32633")
    da = da.assign_coords(y=5e6 - 10 * np.arange(side), x=5e5 + 10 * np.arange(side))
    shifted = da.isel(y=slice(250, None), x=slice(250, None))  # first chunks 6 pixels
    ds = predict_dataarray(shifted, trained_bundle)
    assert ds["class"].data.numblocks == (4, 4)


def test_bad_options_fail_before_any_work(trained_bundle, small_scene):
    da = rioxarray.open_rasterio(small_scene[0], chunks=128)
    for options, match in [
        ({"backend": "nonsense"}, "unknown backend"),
        ({"backend": "torchscript"}, "runs on the torch backend"),
        ({"batch_size": 0}, "batch size"),
        ({"chunks": "auto"}, "chunks"),
        ({"stride": 2.5}, "whole number"),
        ({"bands": ["blue", "green", "red", "nir"]}, "bands"),
    ]:
        with pytest.raises(GeoRasterQuantError, match=match):
            predict_dataarray(da, trained_bundle, **options)
    with pytest.raises(RasterInputError, match="DataArray"):
        predict_dataarray(da.to_dataset(name="scene"), trained_bundle)


def test_a_dataarray_that_differs_from_training_warns(trained_bundle, small_scene):
    da = rioxarray.open_rasterio(small_scene[0]).astype("float32")
    with pytest.warns(RasterMismatchWarning, match="float32"):
        predict_dataarray(da, trained_bundle)


def test_a_replaced_bundle_is_reloaded(bundle_copy, int8_bundle, small_scene):
    import shutil

    da = rioxarray.open_rasterio(small_scene[0], chunks=256)
    fp32 = predict_dataarray(da, bundle_copy, stride=16)["confidence"].values
    shutil.rmtree(bundle_copy)
    shutil.copytree(int8_bundle, bundle_copy)  # new weights at the same path
    again = predict_dataarray(da, bundle_copy, stride=16)["confidence"].values
    int8 = predict_dataarray(da, int8_bundle, stride=16)["confidence"].values
    np.testing.assert_array_equal(again, int8)
    assert not np.array_equal(again, fp32)


def test_disagreement_map_has_its_own_meaning(trained_bundle, int8_bundle, holed_scene):
    da = rioxarray.open_rasterio(holed_scene, chunks=128)
    diff = disagreement_map(
        predict_dataarray(da, trained_bundle, stride=32),
        predict_dataarray(da, int8_bundle, stride=32),
    )
    assert diff.name == "decision_changed" and diff.attrs["flag_meanings"] == "agree differ"
    assert "class_names" not in diff.attrs and diff.rio.nodata == NODATA_CLASS
    assert diff.rio.crs is not None
    with pytest.raises(RasterContractError, match="shape"):
        disagreement_map(np.zeros((3, 3), np.uint8), np.zeros((4, 4), np.uint8))
