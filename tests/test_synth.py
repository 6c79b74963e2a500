"""The built-in synthetic scenes (georaster_quant.synth; DESIGN: synth command)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from synth_helpers import _cached, make_scene, read

from georaster_quant import errors
from georaster_quant.synth import SceneRenderer, SceneSpec, generate_scene
from georaster_quant.tiling import Window

CLASS_NAMES = ["water", "forest", "grassland", "cropland", "built_up", "bare_soil"]
BANDS_3 = ["blue", "green", "red"]
BANDS_4 = ["blue", "green", "red", "nir"]
BANDS_13 = [
    "coastal",
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "water_vapour",
    "cirrus",
    "swir1",
    "swir2",
]


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory) -> tuple[Path, Path]:
    """A 1024x1024 scene with seed 0 (module-cached: about 1 s)."""
    return _cached(
        "synth_big_scene",
        lambda: make_scene(tmp_path_factory.mktemp("big") / "s0", 1024, 1024, 4, 0),
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_pixels(tmp_path: Path) -> None:
    a = make_scene(tmp_path / "a", 192, 160, 4, 3)
    b = make_scene(tmp_path / "b", 192, 160, 4, 3)
    np.testing.assert_array_equal(read(a[0]), read(b[0]))
    np.testing.assert_array_equal(read(a[1]), read(b[1]))


def test_different_seed_gives_different_pixels(tmp_path: Path) -> None:
    a = make_scene(tmp_path / "a", 192, 160, 4, 3)
    b = make_scene(tmp_path / "b", 192, 160, 4, 4)
    sa, sb = read(a[0]), read(b[0])
    assert sa.shape == sb.shape
    # Not a few pixels: the two scenes differ almost everywhere.
    assert (sa != sb).mean() > 0.5
    assert not np.array_equal(read(a[1]), read(b[1]))


@pytest.mark.parametrize("seed", [1, 2])  # 1 has a nodata edge, 2 has none
def test_pixels_do_not_depend_on_chunk_size(tmp_path: Path, seed: int) -> None:
    # 640x400 is not a multiple of either chunk: partial windows on both edges.
    small = make_scene(tmp_path / "c128", 640, 400, 5, seed, chunk=128, workers=2)
    large = make_scene(tmp_path / "c512", 640, 400, 5, seed, chunk=512, workers=1)
    np.testing.assert_array_equal(read(small[0]), read(large[0]))
    np.testing.assert_array_equal(read(small[1]), read(large[1]))


def test_rendered_window_matches_the_written_file(tmp_path: Path) -> None:
    spec = SceneSpec(300, 200, 4, 5)
    scene, labels = generate_scene(tmp_path / "s", spec, chunk=64, progress=False)
    dn, lab = SceneRenderer(spec).render(Window(37, 101, 50, 70))
    with rasterio.open(scene) as ds:
        np.testing.assert_array_equal(ds.read(window=((37, 87), (101, 171))), dn)
    with rasterio.open(labels) as ds:
        np.testing.assert_array_equal(ds.read(1, window=((37, 87), (101, 171))), lab)


# --- bands, format and georeferencing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "names"), [(3, BANDS_3), (4, BANDS_4), (13, BANDS_13)], ids=["3", "4", "13"]
)
def test_band_descriptions(tmp_path: Path, count: int, names: list[str]) -> None:
    scene, _ = make_scene(tmp_path / "s", 48, 32, count, 0)
    with rasterio.open(scene) as ds:
        assert ds.count == count
        assert list(ds.descriptions) == names
        wavelengths = [int(ds.tags(b)["WAVELENGTH_NM"]) for b in range(1, count + 1)]
    assert wavelengths == sorted(wavelengths)  # wavelength order


def test_scene_format(tmp_path: Path) -> None:
    scene, labels = make_scene(tmp_path / "s", 320, 288, 4, 2)
    with rasterio.open(scene) as ds:
        assert ds.dtypes == ("uint16",) * 4
        assert ds.nodata == 0
        assert ds.crs.to_epsg() == 32633
        assert ds.res == (10.0, 10.0)
        assert ds.transform.b == 0 and ds.transform.d == 0 and ds.transform.e < 0
        assert (ds.width, ds.height) == (320, 288)
        assert ds.profile["tiled"] is True
        assert ds.block_shapes[0] == (256, 256)
        assert ds.compression.name == "deflate"
        assert ds.tags()["REFLECTANCE_SCALE"] == "10000"
        assert ds.tags()["SYNTH_SEED"] == "2"
        data = ds.read()
        transform, crs = ds.transform, ds.crs
    # Reflectance-like values: inside (0, 65535], mostly below 1.0 reflectance.
    assert data.max() > 0
    assert np.median(data[data > 0]) < 5000
    with rasterio.open(labels) as ds:
        assert ds.count == 1 and ds.dtypes == ("uint8",)
        assert ds.nodata == 255
        assert ds.transform == transform and ds.crs == crs
        assert ds.profile["tiled"] is True
        assert ds.compression.name == "deflate"
        assert ds.tags()["CLASSES"].split(",") == CLASS_NAMES
        cmap = ds.colormap(1)
        values = np.unique(ds.read(1))
    assert set(values.tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    colours = [cmap[i][:3] for i in range(6)]
    assert len(set(colours)) == 6  # one distinct colour per class
    assert leftovers(tmp_path / "s") == []


def test_scene_size_and_seed_in_transform(tmp_path: Path) -> None:
    spec = SceneSpec(64, 32, 4, 7)
    assert spec.transform.a == 10.0 and spec.transform.e == -10.0
    scene, _ = generate_scene(tmp_path / "s", spec, progress=False)
    with rasterio.open(scene) as ds:
        assert ds.transform == spec.transform


# --- content --------------------------------------------------------------------------------


def test_all_six_classes_in_a_1024_scene(big_scene) -> None:
    labels = read(big_scene[1])[0]
    present = set(np.unique(labels).tolist()) - {255}
    assert present == {0, 1, 2, 3, 4, 5}
    # No class is a handful of pixels: each covers at least 1 % of the scene.
    counts = np.bincount(labels[labels != 255], minlength=6)
    assert (counts / labels.size > 0.01).all(), counts


def test_some_seed_has_a_nodata_edge_matching_the_labels(tmp_path: Path) -> None:
    found = None
    for seed in range(10):
        scene, labels = make_scene(tmp_path / f"s{seed}", 256, 256, 4, seed)
        lab = read(labels)[0]
        if (lab == 255).any():
            found = seed
            break
    assert found is not None, "no seed in 0..9 has a nodata swath edge"
    data = read(scene)
    scene_nodata = data == 0
    # Nodata is all bands at once, never a single band ...
    assert (scene_nodata.all(axis=0) == scene_nodata.any(axis=0)).all()
    # ... and exactly where the labels are nodata.
    np.testing.assert_array_equal(scene_nodata[0], lab == 255)
    # An edge cuts a corner: a minority of the scene.
    assert 0 < (lab == 255).mean() < 0.5
    with rasterio.open(scene) as ds:
        np.testing.assert_array_equal(ds.dataset_mask() == 0, lab == 255)


def test_no_nodata_without_an_edge(tmp_path: Path) -> None:
    # Seed 2 has no swath edge: valid pixels are never 0 (the nodata value).
    scene, labels = make_scene(tmp_path / "s", 256, 256, 4, 2)
    assert (read(scene) > 0).all()
    assert (read(labels) != 255).all()


def test_clouds_are_present_but_not_dominant(big_scene) -> None:
    data = read(big_scene[0])
    bright = (data > 3500).all(axis=0)
    fraction = bright.mean()
    assert bright.any(), "no cloud pixels (all bands > 3500) in a 1024x1024 scene"
    assert fraction < 0.15, f"{fraction:.1%} of the scene is bright cloud"


# --- COG ----------------------------------------------------------------------------------------


def test_cog_output(tmp_path: Path) -> None:
    scene, labels = make_scene(tmp_path / "cog", 512, 384, 4, 1, cog=True)
    plain = make_scene(tmp_path / "plain", 512, 384, 4, 1)
    for path in (scene, labels):
        with rasterio.open(path) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", path
            assert ds.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
            assert ds.overviews(1), f"{path}: no overviews"
            assert ds.profile["tiled"] is True
    # Same pixels, same georeferencing and metadata as the plain GeoTIFF.
    np.testing.assert_array_equal(read(scene), read(plain[0]))
    np.testing.assert_array_equal(read(labels), read(plain[1]))
    with rasterio.open(scene) as a, rasterio.open(plain[0]) as b:
        assert a.transform == b.transform and a.crs == b.crs and a.nodata == b.nodata
        assert a.descriptions == b.descriptions
    with rasterio.open(labels) as ds:
        assert ds.tags()["CLASSES"].split(",") == CLASS_NAMES
        assert ds.colormap(1)[0][:3] == (30, 90, 200)
        # Mode resampling keeps overview values in the class set.
        ov = ds.read(1, out_shape=(384 // 2, 512 // 2))
    assert set(np.unique(ov).tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert leftovers(tmp_path / "cog") == []
    assert sorted(p.name for p in (tmp_path / "cog").iterdir()) == ["labels.tif", "scene.tif"]


# --- refusals -----------------------------------------------------------------------------------


def test_existing_output_is_refused_without_overwrite(tmp_path: Path) -> None:
    scene, labels = make_scene(tmp_path / "s", 32, 32, 4, 0)
    before = read(scene)
    with pytest.raises(errors.OutputPathError, match="already exists") as info:
        make_scene(tmp_path / "s", 32, 32, 4, 1)
    assert str(tmp_path / "s") in str(info.value)
    np.testing.assert_array_equal(read(scene), before)  # untouched
    make_scene(tmp_path / "s", 32, 32, 4, 1, overwrite=True)
    assert not np.array_equal(read(scene), before)
    assert leftovers(tmp_path / "s") == []


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(errors.OutputPathError) as info:
        make_scene(target, 32, 32, 4, 0)
    assert str(target) in str(info.value)
    assert target.read_text() == "not a folder"


def test_out_dir_below_a_file_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "file"
    parent.write_text("x")
    with pytest.raises(errors.OutputPathError) as info:
        make_scene(parent / "out", 32, 32, 4, 0)
    assert str(parent / "out") in str(info.value)


def test_out_dir_with_missing_parent_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.OutputPathError):
        make_scene(tmp_path / "missing" / "out", 32, 32, 4, 0)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("bands", [2, 14])
def test_band_count_out_of_range_is_a_config_error(bands: int) -> None:
    with pytest.raises(errors.ConfigError, match="bands"):
        SceneSpec(32, 32, bands, 0)


def test_bad_chunk_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="chunk"):
        make_scene(tmp_path / "s", 32, 32, 4, 0, chunk=100)
    assert not (tmp_path / "s").exists()
