"""predict: class maps, run summary, QGIS style, resume, batch jobs, backends, real rasters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from synth_helpers import run_cli

from georaster_quant.backend import open_backend
from georaster_quant.errors import ConfigError, OutputPathError
from georaster_quant.export import export_bundle
from georaster_quant.predict import predict_grid
from georaster_quant.runner import (
    PART_ROWS,
    PredictOptions,
    _log_records,
    _parts_dir,
    predict_raster,
)
from georaster_quant.synth import SceneSpec, generate_scene

pytest_plugins = ["conftest_synth"]
run = run_cli


@pytest.fixture(scope="module")
def unseen_scene(tmp_path_factory) -> Path:
    """A scene with a seed and size no other test uses, with a nodata edge."""
    out = tmp_path_factory.mktemp("unseen")
    scene, _ = generate_scene(out, SceneSpec(448, 320, 4, 2024), progress=False)
    return scene


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {
            "profile": src.profile,
            "tags": src.tags(),
            "descriptions": src.descriptions,
            "transform": src.transform,
            "crs": src.crs,
            "overviews": src.overviews(1),
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
        }


def test_map_matches_the_grid_and_carries_its_provenance(
    capsys, trained_bundle, unseen_scene, tmp_path
):
    out = tmp_path / "map.tif"
    code, stdout, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        unseen_scene,
        "--output",
        out,
        "--stride",
        "32",
        "--probabilities",
    )
    assert code == 0, err
    bands, info = read(out)
    with rasterio.open(unseen_scene) as src:
        assert info["transform"] == src.transform * src.transform.scale(32)
        assert info["crs"] == src.crs
        assert bands.shape == (2 + 6, -(-src.height // 32), -(-src.width // 32))
    assert info["profile"]["dtype"] == "uint8" and info["profile"]["nodata"] == 255
    assert info["profile"]["tiled"] and info["profile"]["compress"] == "deflate"
    assert info["descriptions"][:2] == ("class", "confidence")
    assert info["tags"]["CLASSES"].split(",")[0] == "water"
    assert info["tags"]["QUANT_TYPE"] == "fp32" and info["tags"]["STRIDE"] == "32"
    cls, conf, probs = bands[0], bands[1], bands[2:]
    valid = cls != 255
    assert valid.any() and (~valid).any()  # seed 2024 has a nodata edge
    assert cls[valid].max() < 6 and conf[valid].max() <= 100
    assert np.all(np.abs(probs[:, valid].astype(int).sum(axis=0) - 100) <= 4)
    # The same decisions as the in-memory predictor.
    ref = predict_grid(open_backend(trained_bundle), unseen_scene, stride=32)
    assert np.array_equal(cls, ref.classes)
    summary = json.loads(out.with_name("map.tif.json").read_text())
    for key in (
        "tiles_total",
        "tiles_inferred",
        "seconds",
        "mpx_per_s",
        "peak_rss_mb",
        "area_per_class",
    ):
        assert key in summary
    assert summary["tiles_total"] == summary["tiles_inferred"] == cls.size
    ha = sum(v["ha"] for v in summary["area_per_class"].values())
    with rasterio.open(unseen_scene) as src:
        assert ha <= src.width * src.height * 100 / 1e4  # 10 m pixels: 0.01 ha each
    qml = out.with_suffix(".qml").read_text()
    assert "water" in qml and "paletteEntry" in qml
    assert not _parts_dir(out).exists()


def test_cog_output_has_overviews_even_when_small(capsys, trained_bundle, small_scene, tmp_path):
    out = tmp_path / "map.tif"
    code, _, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        small_scene[0],
        "--output",
        out,
        "--cog",
        "-q",
    )
    assert code == 0, err
    _, info = read(out)
    assert info["layout"] == "COG" and info["overviews"]
    with rasterio.open(out) as src:
        assert src.colormap(1)[0][:3] == (30, 90, 200)


class _Crash(Exception):
    pass


class _Crashing:
    """A backend that dies after ``after`` batches, as a killed run would."""

    def __init__(self, inner, after):
        self.inner, self.after = inner, after
        self.name, self.meta, self.size_bytes = inner.name, inner.meta, inner.size_bytes

    def __call__(self, batch):
        if self.after == 0:
            raise _Crash
        self.after -= 1
        return self.inner(batch)


class _Recording:
    """The real backend, asking for a batch layout and recording the layouts it gets."""

    def __init__(self, inner, channels_last):
        self.inner, self.channels_last, self.layouts = inner, channels_last, set()
        self.name, self.meta, self.size_bytes = inner.name, inner.meta, inner.size_bytes

    def __call__(self, batch):
        self.layouts.add(bool(np.moveaxis(batch, 1, -1).flags["C_CONTIGUOUS"]))
        return self.inner(batch)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_runner_reads_the_batch_layout_the_backend_asks_for(
    trained_bundle, int8_bundle, unseen_scene, tmp_path, kind
):
    """Either layout gives the same map; the INT8 one runs the traced, fused model."""
    backend = open_backend(trained_bundle if kind == "fp32" else int8_bundle, "torch")
    assert backend.channels_last
    maps = {}
    for channels_last in (False, True):
        recording = _Recording(backend, channels_last)
        out = tmp_path / f"{channels_last}.tif"
        opts = PredictOptions(stride=16, batch_size=48, probabilities=True)
        predict_raster(recording, unseen_scene, out, opts)
        assert recording.layouts == {channels_last}
        maps[channels_last] = read(out)[0]
    np.testing.assert_array_equal(maps[False], maps[True])


def test_the_python_runner_takes_a_bundle_path(trained_bundle, small_scene, tmp_path):
    out = tmp_path / "map.tif"
    predict_raster(trained_bundle, small_scene[0], out, PredictOptions(stride=32))
    cells = predict_grid(trained_bundle, small_scene[0], stride=32)  # a path here too
    np.testing.assert_array_equal(read(out)[0][0], cells.classes)
    with pytest.raises(ConfigError, match="PredictOptions"):
        predict_raster(trained_bundle, small_scene[0], tmp_path / "b.tif", {"stride": 32})
    assert not (tmp_path / "b.tif").exists()


def test_resume_after_an_interruption_gives_the_same_map(trained_bundle, unseen_scene, tmp_path):
    backend = open_backend(trained_bundle)
    full = tmp_path / "full.tif"
    opts = PredictOptions(stride=8, batch_size=64)  # 56 x 40 cells: parts of 64 rows -> 1 part
    ref = predict_raster(backend, unseen_scene, full, opts)
    out = tmp_path / "map.tif"
    opts = PredictOptions(stride=4, batch_size=256)  # 112 x 80 cells: two parts
    total = predict_raster(backend, unseen_scene, tmp_path / "whole.tif", opts)
    with pytest.raises(_Crash):
        predict_raster(_Crashing(backend, 30), unseen_scene, out, opts)
    assert not out.exists() and _parts_dir(out).exists()
    resumed = predict_raster(
        backend, unseen_scene, out, PredictOptions(stride=4, batch_size=256, resume=True)
    )
    # The 30 batches decided before the crash are not inferred again (112 x 80 tiles).
    assert resumed["tiles_inferred"] == total["tiles_total"] - 30 * 256
    a, _ = read(out)
    b, _ = read(tmp_path / "whole.tif")
    assert np.array_equal(a, b)
    assert ref["tiles_total"] == 56 * 40


def test_resume_refuses_a_damaged_part(trained_bundle, unseen_scene, tmp_path):
    backend = open_backend(trained_bundle)
    out = tmp_path / "map.tif"
    opts = PredictOptions(stride=4, batch_size=256)  # 112 x 80 cells: two parts
    with pytest.raises(_Crash):
        predict_raster(_Crashing(backend, 30), unseen_scene, out, opts)  # the first part done
    [part] = _parts_dir(out).glob("part_*.npz")
    part.write_bytes(part.read_bytes()[:100])
    resume = PredictOptions(stride=4, batch_size=256, resume=True)
    with pytest.raises(OutputPathError, match="damaged part"):
        predict_raster(backend, unseen_scene, out, resume)
    assert not out.exists()


def test_resume_mid_row_with_probabilities_twice(trained_bundle, unseen_scene, tmp_path):
    import dataclasses

    backend = open_backend(trained_bundle)
    opts = PredictOptions(stride=4, batch_size=48, probabilities=True)  # rows of 80 tiles
    whole = predict_raster(backend, unseen_scene, tmp_path / "whole.tif", opts)
    out = tmp_path / "map.tif"
    with pytest.raises(_Crash):  # 7 x 48 tiles: 4 rows and 16 tiles of the fifth
        predict_raster(_Crashing(backend, 7), unseen_scene, out, opts)
    again = dataclasses.replace(opts, resume=True)
    with pytest.raises(_Crash):  # 50 x 48 more, from the fifth row's 17th tile on
        predict_raster(_Crashing(backend, 50), unseen_scene, out, again)
    resumed = predict_raster(backend, unseen_scene, out, again)
    assert resumed["tiles_inferred"] == whole["tiles_total"] - (7 + 50) * 48
    a, _ = read(out)
    b, _ = read(tmp_path / "whole.tif")
    assert a.shape[0] == 2 + 6 and np.array_equal(a, b)


def test_resume_after_a_torn_log_record(trained_bundle, unseen_scene, tmp_path):
    import dataclasses

    backend = open_backend(trained_bundle)
    opts = PredictOptions(stride=4, batch_size=48, probabilities=True)  # 8960 tiles
    whole = predict_raster(backend, unseen_scene, tmp_path / "whole.tif", opts)
    out = tmp_path / "map.tif"
    with pytest.raises(_Crash):
        predict_raster(_Crashing(backend, 10), unseen_scene, out, opts)
    (log,) = _parts_dir(out).glob("log_*.bin")
    log.write_bytes(log.read_bytes()[:-30])  # the 10th record torn, as a short write leaves it
    again = dataclasses.replace(opts, resume=True)
    with pytest.raises(_Crash):  # appends after the torn record must stay readable
        predict_raster(_Crashing(backend, 5), unseen_scene, out, again)
    resumed = predict_raster(backend, unseen_scene, out, again)
    assert resumed["tiles_inferred"] == whole["tiles_total"] - (9 + 5) * 48
    a, _ = read(out)
    b, _ = read(tmp_path / "whole.tif")
    assert np.array_equal(a, b)


def test_resume_when_a_batch_spans_several_parts(trained_bundle, make_tif, tmp_path):
    # 600 x 8 pixels at stride 4: 150 rows of 2 cells, parts of 64 rows hold 128 tiles.
    rng = np.random.default_rng(3)
    image = make_tif("narrow.tif", rng.integers(200, 3000, (4, 600, 8)).astype("uint16"))
    backend = open_backend(trained_bundle)
    opts = PredictOptions(stride=4, batch_size=150)
    whole = predict_raster(backend, image, tmp_path / "whole.tif", opts)
    out = tmp_path / "map.tif"
    with pytest.raises(_Crash):
        predict_raster(_Crashing(backend, 1), image, out, opts)
    resumed = predict_raster(
        backend, image, out, PredictOptions(stride=4, batch_size=150, resume=True)
    )
    assert resumed["tiles_inferred"] == whole["tiles_total"] - 150
    assert np.array_equal(read(out)[0], read(tmp_path / "whole.tif")[0])


def test_existing_output_needs_overwrite_or_resume(capsys, trained_bundle, small_scene, tmp_path):
    out = tmp_path / "map.tif"
    out.write_text("keep me")
    code, _, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", small_scene[0], "--output", out
    )
    assert code == 2 and "--overwrite" in err and out.read_text() == "keep me"
    code, _, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        small_scene[0],
        "--output",
        out,
        "--overwrite",
        "--resume",
    )
    assert code == 2 and "exclude" in err


def test_batch_job_continues_past_a_bad_input(
    capsys, trained_bundle, small_scene, unseen_scene, tmp_path
):
    bad = tmp_path / "broken.tif"
    bad.write_text("not a raster")
    other = tmp_path / "other.tif"
    other.write_bytes(unseen_scene.read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_text(f"{other}\n{bad}\n")
    out = tmp_path / "maps"
    code, stdout, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        small_scene[0],
        "--image",
        f"@{listing}",
        "--output",
        out,
        "-q",
    )
    assert code == 2
    assert "broken.tif" in err and "2 of 3 maps" in stdout
    assert sorted(p.name for p in out.glob("*.tif")) == ["other_classes.tif", "scene_classes.tif"]


def test_batch_name_collision_is_refused_before_any_work(
    capsys, trained_bundle, small_scene, tmp_path
):
    out = tmp_path / "maps"
    code, _, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        small_scene[0],
        "--image",
        small_scene[0],
        "--output",
        out,
    )
    assert code == 2 and "scene_classes.tif" in err
    assert not list(out.glob("*.tif")) if out.exists() else True


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_backends_agree_with_torch_on_the_map(
    trained_bundle, int8_bundle, unseen_scene, tmp_path, fmt, precision
):
    bundle = trained_bundle if precision == "fp32" else int8_bundle
    suffix = "onnx" if fmt == "onnx" else "pt"
    exported = export_bundle(bundle, fmt, tmp_path / f"m.{suffix}")
    opts = PredictOptions(stride=16)
    predict_raster(open_backend(bundle, "torch"), unseen_scene, tmp_path / "a.tif", opts)
    predict_raster(open_backend(exported["path"]), unseen_scene, tmp_path / "b.tif", opts)
    a, _ = read(tmp_path / "a.tif")
    b, _ = read(tmp_path / "b.tif")
    valid = a[0] != 255
    assert (a[0][valid] == b[0][valid]).mean() >= 0.99


def test_real_naip_rgbn_maps_with_explicit_band_order(
    capsys, trained_bundle, shared_data, tmp_path
):
    naip = shared_data / "naip_rgbn_sub.tif"
    out = tmp_path / "naip.tif"
    code, _, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        naip,
        "--bands",
        "3,2,1,4",
        "--output",
        out,
        "-q",
    )
    assert code == 0, err
    assert "dtype is uint8" in err and "pixel size" in err  # said, not fatal
    bands, info = read(out)
    assert bands.shape[1:] == (5, 5) and info["crs"].to_epsg() == 26917


def test_band_count_mismatch_is_refused_before_reading(
    capsys, trained_bundle, shared_data, tmp_path
):
    rgb = shared_data / "rgb_byte.tif"
    out = tmp_path / "m.tif"
    code, _, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", rgb, "--output", out
    )
    assert code == 2 and "rgb_byte.tif" in err and "--bands" in err
    assert not out.exists() and not _parts_dir(out).exists()


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_same_map(trained_bundle, tmp_path):
    """A real SIGKILL in the middle of a run, then --resume: identical to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    scene, _ = generate_scene(tmp_path / "s", SceneSpec(640, 384, 4, 77), progress=False)
    args = [
        "--weights",
        str(trained_bundle),
        "--image",
        str(scene),
        "--stride",
        "2",
        "--batch-size",
        "64",
        "-q",
    ]
    cmd = [sys.executable, "-c", "from georaster_quant.cli.main import main; main()", "predict"]
    out = tmp_path / "map.tif"
    proc = subprocess.Popen([*cmd, *args, "--output", str(out)], stderr=subprocess.PIPE)
    parts = _parts_dir(out)
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("part_*.npz")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-500:]}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a map at the output path"
    saved = {int(p.stem.split("_")[1]) for p in parts.glob("part_*.npz")}
    assert saved
    logged = 0  # tiles the log holds beyond the saved parts
    for log in parts.glob("log_*.bin"):
        for rows, _, _ in _log_records(log.read_bytes(), 0):
            logged += int(sum(r // PART_ROWS not in saved for r in rows.tolist()))
    res = subprocess.run(
        [*cmd, *args, "--output", str(out), "--resume"], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-1000:]
    whole = tmp_path / "whole.tif"
    res = subprocess.run([*cmd, *args, "--output", str(whole)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-1000:]
    a, _ = read(out)
    b, _ = read(whole)
    assert np.array_equal(a, b)
    summary = json.loads(out.with_name("map.tif.json").read_text())
    rows, cols = summary["grid"]
    done = sum(min(PART_ROWS, rows - p * PART_ROWS) for p in saved) * cols + logged
    assert summary["tiles_inferred"] == summary["tiles_total"] - done  # nothing done twice
    assert summary["resumed"] is True


def test_output_equal_to_the_input_is_refused(capsys, trained_bundle, tmp_path, small_scene):
    copy = tmp_path / "scene.tif"
    copy.write_bytes(Path(small_scene[0]).read_bytes())
    before = copy.read_bytes()
    code, _, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        copy,
        "--output",
        copy,
        "--overwrite",
    )
    assert code == 2 and "is the input" in err
    assert copy.read_bytes() == before


@pytest.mark.parametrize("kind", ["directory", "empty", "truncated"])
def test_unreadable_inputs_are_bad_input(capsys, trained_bundle, small_scene, tmp_path, kind):
    bad = tmp_path / "bad.tif"
    if kind == "directory":
        bad.mkdir()
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(Path(small_scene[0]).read_bytes()[:5000])
    out = tmp_path / "map.tif"
    code, _, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", bad, "--output", out, "-q"
    )
    assert code == 2 and "bad.tif" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not _parts_dir(out).exists()


def test_all_nodata_and_tiny_rasters_work(capsys, trained_bundle, shared_data, make_tif, tmp_path):
    out = tmp_path / "nodata_map.tif"
    code, _, err = run(
        capsys,
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        shared_data / "all_nodata.tif",
        "--output",
        out,
        "-q",
    )
    assert code == 0, err
    bands, _ = read(out)
    assert (bands == 255).all()
    summary = json.loads(out.with_name("nodata_map.tif.json").read_text())
    assert all(v["m2"] == 0 for v in summary["area_per_class"].values())
    for shape in [(1, 1), (1, 37), (20, 30)]:
        tiny = make_tif(
            f"tiny_{shape[0]}x{shape[1]}.tif",
            np.full((4, *shape), 1200, dtype="uint16"),
            descriptions=["blue", "green", "red", "nir"],
        )
        out = tmp_path / f"tiny_{shape[0]}x{shape[1]}_map.tif"
        code, _, err = run(
            capsys, "predict", "--weights", trained_bundle, "--image", tiny, "--output", out, "-q"
        )
        assert code == 0, err
        bands, _ = read(out)
        assert bands.shape[1:] == (1, 1) and bands[0, 0, 0] < 6


def test_batch_resume_skips_finished_maps(capsys, trained_bundle, small_scene, tmp_path):
    other = tmp_path / "other.tif"
    other.write_bytes(Path(small_scene[0]).read_bytes())
    out = tmp_path / "maps"
    args = [
        "predict",
        "--weights",
        trained_bundle,
        "--image",
        small_scene[0],
        "--image",
        other,
        "--output",
        out,
        "-q",
    ]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    before = (out / "other_classes.tif").stat().st_mtime_ns
    code, stdout, err = run(capsys, *args, "--resume")
    assert code == 0, err
    assert stdout.count("already complete, skipped") == 2
    assert (out / "other_classes.tif").stat().st_mtime_ns == before


# --------------------------------------------------------------------------- sidecars and resume


def test_sidecar_paths_never_replace_the_input_a_folder_or_a_file_unasked(
    capsys, trained_bundle, small_scene, tmp_path
):
    scene = tmp_path / "m.qml"  # the map m.tif would write its style over this input
    scene.write_bytes(Path(small_scene[0]).read_bytes())
    before = scene.read_bytes()
    args = ["predict", "--weights", trained_bundle, "-q"]
    code, _, err = run(capsys, *args, "--image", scene, "--output", tmp_path / "m.tif")
    assert code == 2 and "is the input" in err and "m.qml" in err, err
    assert scene.read_bytes() == before and not (tmp_path / "m.tif").exists()

    folder = tmp_path / "n.tif.json"  # a folder where the run summary would go
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        code, _, err = run(
            capsys, *args, "--image", small_scene[0], "--output", tmp_path / "n.tif", *extra
        )
        assert code == 2 and "n.tif.json" in err and "folder" in err, err
    assert (folder / "keep.txt").read_text() == "precious" and not (tmp_path / "n.tif").exists()

    style = tmp_path / "o.qml"  # the user's own style beside a map not made yet
    style.write_text("mine")
    code, _, err = run(capsys, *args, "--image", small_scene[0], "--output", tmp_path / "o.tif")
    assert code == 2 and "o.qml" in err and "--overwrite" in err, err
    assert style.read_text() == "mine" and not (tmp_path / "o.tif").exists()


def test_resume_of_a_finished_map_checks_that_the_same_run_made_it(
    capsys, trained_bundle, small_scene, tmp_path
):
    out = tmp_path / "map.tif"
    args = ["predict", "--weights", trained_bundle, "--image", small_scene[0], "--output", out]
    code, _, err = run(capsys, *args, "--stride", "32", "-q")
    assert code == 0, err
    before = out.read_bytes()
    code, stdout, err = run(capsys, *args, "--stride", "32", "--resume", "-q")
    assert code == 0 and "already complete, skipped" in stdout, err
    code, _, err = run(capsys, *args, "--stride", "16", "--resume", "-q")
    assert code == 2 and "not by this run" in err and "--overwrite" in err, err
    summary_path = out.with_name("map.tif.json")
    summary = json.loads(summary_path.read_text())
    summary_path.write_text(json.dumps({k: v for k, v in summary.items() if k != "run_signature"}))
    code, _, err = run(capsys, *args, "--stride", "32", "--resume", "-q")
    assert code == 2 and "older version" in err, err  # cannot tell how it was made
    summary_path.write_text(json.dumps(summary))
    other = tmp_path / "other.tif"
    other.write_bytes(Path(small_scene[0]).read_bytes())
    args[args.index(small_scene[0])] = other
    code, _, err = run(capsys, *args, "--stride", "32", "--resume", "-q")
    assert code == 2 and "not by this run" in err, err  # same pixels, another input file
    assert out.read_bytes() == before


# --------------------------------------------------------------------------- area per class


def _areas(capsys, bundle, image: Path, out: Path) -> tuple[dict, str]:
    code, _, err = run(capsys, "predict", "--weights", bundle, "--image", image, "--output", out)
    assert code == 0, err
    return json.loads(out.with_name(out.name + ".json").read_text()), err


BLOCK = np.full((4, 40, 50), 1500, dtype="uint16")


def test_area_of_a_rotated_projected_grid_is_its_determinant(
    capsys, trained_bundle, make_tif, tmp_path
):
    from affine import Affine

    rotated = Affine.translation(500_000, 5_000_000) @ Affine.rotation(30) @ Affine.scale(10, -10)
    image = make_tif("rotated.tif", BLOCK, transform=rotated)
    summary, err = _areas(capsys, trained_bundle, image, tmp_path / "map.tif")
    m2 = sum(v["m2"] for v in summary["area_per_class"].values())
    assert summary["area_method"] == "projected"
    # 100 m² in the plane; near UTM 33N's central meridian the areal scale is 0.9996².
    assert m2 == pytest.approx(40 * 50 * 100.0 / 0.9996**2, rel=1e-4)
    assert sum(v["pixels"] for v in summary["area_per_class"].values()) == 40 * 50
    assert "pixel size" not in err  # 10 x 10 like the training scene, rotated or not


def test_area_of_a_geographic_grid_is_ellipsoidal(capsys, trained_bundle, make_tif, tmp_path):
    from affine import Affine
    from pyproj import Geod

    step = 0.0001  # about 11 m x 8 m at 45 degrees north
    transform = Affine(step, 0, 10.0, 0, -step, 45.0)
    image = make_tif("wgs84.tif", BLOCK, transform=transform, crs="EPSG:4326")
    summary, _ = _areas(capsys, trained_bundle, image, tmp_path / "map.tif")
    m2 = sum(v["m2"] for v in summary["area_per_class"].values())
    lons = [10.0, 10.0 + 50 * step, 10.0 + 50 * step, 10.0]
    lats = [45.0, 45.0, 45.0 - 40 * step, 45.0 - 40 * step]
    expected, _ = Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert summary["area_method"] == "ellipsoidal"
    assert m2 == pytest.approx(abs(expected), rel=1e-5)


def test_area_in_web_mercator_is_ground_area(capsys, trained_bundle, make_tif, tmp_path):
    from affine import Affine
    from pyproj import Geod, Transformer

    x0, y0 = 1_113_195.0, 8_399_738.0  # about 10° E, 60° N: the plane is 4x the ground here
    image = make_tif("merc.tif", BLOCK, transform=Affine(10, 0, x0, 0, -10, y0), crs="EPSG:3857")
    summary, _ = _areas(capsys, trained_bundle, image, tmp_path / "map.tif")
    m2 = sum(v["m2"] for v in summary["area_per_class"].values())
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    lons, lats = to_lonlat.transform([x0, x0 + 500, x0 + 500, x0], [y0, y0, y0 - 400, y0 - 400])
    expected, _ = Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)
    assert summary["area_method"] == "projected"
    assert m2 == pytest.approx(abs(expected), rel=1e-5)
    assert m2 < 40 * 50 * 100 / 3.9


def test_no_geotransform_means_unknown_area(capsys, trained_bundle, make_tif, tmp_path):
    from affine import Affine

    image = make_tif("pixels.tif", BLOCK, transform=Affine.identity())  # a CRS, no transform
    summary, err = _areas(capsys, trained_bundle, image, tmp_path / "map.tif")
    assert "pixels.tif: no geotransform" in err
    assert summary["area_method"] == "unknown"
    assert all(v["m2"] is None for v in summary["area_per_class"].values())


def test_no_crs_is_a_warning_and_areas_are_unknown(capsys, trained_bundle, make_tif, tmp_path):
    image = make_tif("nocrs.tif", BLOCK, crs=None)
    out = tmp_path / "map.tif"
    summary, err = _areas(capsys, trained_bundle, image, out)
    assert "nocrs.tif: no CRS" in err
    assert summary["area_method"] == "unknown"
    assert all(v["m2"] is None and v["ha"] is None for v in summary["area_per_class"].values())
    with rasterio.open(out) as src:
        assert src.crs is None


@pytest.mark.parametrize("bands", ["1,,2,3", "", "0,1,2,3", "4,3,2,x", "1,1,2,3"])
def test_bad_band_lists_are_usage_errors(capsys, trained_bundle, small_scene, tmp_path, bands):
    out = tmp_path / "map.tif"
    code, _, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", small_scene[0],
        "--output", out, "--bands", bands,
    )  # fmt: skip
    assert code == 2 and "--bands" in err and repr(bands) in err, err
    assert not out.exists()


def test_a_failed_run_ends_a_pending_read_retry_at_once(
    monkeypatch, small_scene, trained_bundle, tmp_path: Path
) -> None:
    """The model fails while the reader waits out a retry backoff: the run ends at once.

    A batch of 32 tiles is the first block row (4 rows of 8 tiles); the reader then reads the
    second block row while the model works on it.
    """
    import time

    from rasterio.errors import RasterioError

    from georaster_quant import io as gio

    monkeypatch.setattr(gio, "read_retries", lambda _path: (3, 30.0))  # as for an HTTP input
    real, calls = gio.RasterReader._read_from, []

    def second_block_row_fails(self, ds, window, out):
        calls.append(window)
        if len(calls) > 1:
            raise RasterioError("HTTP response code: 503")
        return real(self, ds, window, out)

    monkeypatch.setattr(gio.RasterReader, "_read_from", second_block_row_fails)
    backend = open_backend(trained_bundle)

    class FailingModel:  # the real model's contract, failing on its first batch
        name, meta, size_bytes = backend.name, backend.meta, backend.size_bytes

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            time.sleep(0.3)  # the reader reaches the failing read meanwhile
            raise RuntimeError("the model failed")

    out = tmp_path / "map.tif"
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the model failed"):
        predict_raster(FailingModel(), small_scene[0], out, PredictOptions(batch_size=32))
    assert len(calls) >= 2  # the reader did wait to retry
    assert time.monotonic() - start < 10  # and did not sleep out the 30 s backoff
    assert not out.exists()


def test_a_reader_retries_again_after_a_run(small_scene, trained_bundle) -> None:
    """A run's stop event ends retry waits only while it lasts: a reader used afterwards
    (a library user's own reader) retries as before."""
    from georaster_quant.contract import open_input
    from georaster_quant.runner import LocalInference

    backend = open_backend(trained_bundle)
    with open_input(small_scene[0], backend.meta, None) as reader:
        own = reader.cancel
        grid = backend.meta.input.grid(reader.info.height, reader.info.width, None)
        rows = list(
            LocalInference(backend).rows(small_scene[0], reader, grid, [0, 1], PredictOptions())
        )
        assert [r for r, _ in rows] == [0, 1]
        assert reader.cancel is own and not own.is_set()
