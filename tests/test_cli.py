"""The command line: help, commands end to end, exit codes and messages, --config, --debug.

Exit codes come from :func:`georaster_quant.cli.main.main`, which calls ``sys.exit``: most
tests call it in-process and catch ``SystemExit`` (fast, no torch import per test); a few run
the installed console script in a subprocess to check the real entry point.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine
from synth_helpers import (
    assert_one_line_error,
    read,
    run_cli,
    run_cli_subprocess,
    write_labels_like,
)

from georaster_quant.backend import open_backend
from georaster_quant.cli.main import cli

FAST_TRAIN = [
    "--epochs",
    "1",
    "--split-block",
    "128",
    "--sample-stride",
    "32",
    "--max-tiles",
    "400",
]

#: Shared session fixtures (small_scene, trained_bundle, ...): see conftest_synth.py.
pytest_plugins = ["conftest_synth"]


run = run_cli


def dot_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def bad(small_scene, tmp_path_factory) -> SimpleNamespace:
    """Bad inputs, all real files, built once for the module."""
    scene, labels = small_scene
    d = tmp_path_factory.mktemp("bad")
    lab = read(labels)[0]
    with rasterio.open(labels) as ds:
        transform = ds.transform
    nine = lab.copy()
    nine[100:140, 200:260] = 9
    ns = SimpleNamespace(
        scene=scene,
        labels=labels,
        dir=d,
        missing=d / "missing.tif",
        text=d / "notes.tif",
        afile=d / "afile",
        labels_small=write_labels_like(labels, d / "labels_small.tif", lab[:256, :256]),
        labels_shifted=write_labels_like(
            labels,
            d / "labels_shifted.tif",
            lab,
            transform=Affine(*transform[:2], transform.c + 10.0, *transform[3:6]),  # 1 px east
        ),
        labels_nine=write_labels_like(labels, d / "labels_nine.tif", nine),
        labels_empty=write_labels_like(labels, d / "labels_empty.tif", np.full_like(lab, 255)),
    )
    ns.text.write_text("this is not a raster\n")
    ns.afile.write_text("a regular file\n")
    return ns


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_help_has_examples(capsys, command: str) -> None:
    code, out, err = run(capsys, command, "--help")
    assert code == 0, err
    assert f"Usage: georaster-quant {command}" in out
    # "Examples:" (one-example commands may say "Example:"), followed by indented commands.
    match = re.search(r"^\s*Examples?:\s*\n\s+georaster-quant " + command, out, re.M)
    assert match, out


def test_console_script_help_and_version() -> None:
    done = run_cli_subprocess("--help")
    assert done.returncode == 0, done.stderr
    for command in ("synth", "train", "evaluate", "info"):
        assert command in done.stdout
    done = run_cli_subprocess("--version")
    assert done.returncode == 0
    assert "georaster-quant" in done.stdout


def test_no_such_command_is_a_usage_error(capsys) -> None:
    code, _, err = run(capsys, "frobnicate")
    assert code == 2
    assert "frobnicate" in err and "Traceback" not in err


# --- commands that work -------------------------------------------------------------------------


def test_synth_tiny_scene(capsys, tmp_path: Path) -> None:
    out_dir = tmp_path / "tiny"
    code, out, err = run(
        capsys, "synth", out_dir, "--width", 40, "--height", 24, "--bands", 3, "--seed", 5, "-q"
    )
    assert code == 0, err
    assert "wrote" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["labels.tif", "scene.tif"]
    with rasterio.open(out_dir / "scene.tif") as ds:
        assert (ds.width, ds.height, ds.count) == (40, 24, 3)
        assert ds.tags()["SYNTH_SEED"] == "5"
    # A second run without --overwrite is refused, with --overwrite it works.
    code, out, err = run(capsys, "synth", out_dir, "--width", 40, "--height", 24, "-q")
    assert_one_line_error(code, out, err, out_dir / "scene.tif")
    code, _, err = run(capsys, "synth", out_dir, "--width", 40, "--height", 24, "-q", "--overwrite")
    assert code == 0, err


@pytest.mark.slow
def test_demo_runs_the_main_job_end_to_end(capsys, tmp_path: Path) -> None:
    """`make demo`'s command, small: scenes, training, baseline, evaluation on the unseen scene."""
    out_dir = tmp_path / "demo"
    code, out, err = run(
        capsys, "demo", "--output", out_dir, "--size", 512, "--epochs", 1, "--seed", 3, "-q"
    )
    assert code == 0, err
    assert re.search(r"CNN \d+\.\d+% vs spectral baseline \d+\.\d+%", out), out
    results = json.loads((out_dir / "evaluation.json").read_text())["results"]
    assert 1 / 6 < results[0]["accuracy"] <= 1.0  # one epoch on 512²: above chance (6 classes)
    assert (out_dir / "model" / "bundle.json").is_file()
    with rasterio.open(out_dir / "test" / "scene.tif") as ds:
        assert (ds.width, ds.height) == (512, 512)  # the test scene: 3/4 of --size, at least 512
    code, out, err = run(capsys, "demo", "--output", out_dir, "--size", 256, "-q")
    assert code == 2 and "256" in err  # below the smallest scene a validation split works on


def test_train_then_info(capsys, small_scene, tmp_path: Path) -> None:
    scene, labels = small_scene
    bundle = tmp_path / "runs" / "model"
    bundle.parent.mkdir()
    code, out, err = run(
        capsys, "train", "--image", scene, "--labels", labels, "--output", bundle, *FAST_TRAIN, "-q"
    )
    assert code == 0, err
    assert "wrote" in out and "validation accuracy" in out
    # --onnx is the default: the bundle holds its ONNX export, which `auto` then runs.
    assert f"wrote {bundle / 'model.onnx'} (onnx, fp32" in out
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.json", "model.onnx", "weights.pt"]
    assert dot_files(bundle.parent) == []
    assert open_backend(bundle).name == "onnxruntime"

    code, out, err = run(capsys, "info", bundle)
    assert code == 0, err
    for word in ("blue", "nir", "water", "bare_soil", "zscore", "fp32", "64"):
        assert word in out

    done = run_cli_subprocess("info", bundle, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["tile_size"] == 64
    assert info["default_stride"] == 64
    assert info["bands"] == 4
    assert info["band_names"] == ["blue", "green", "red", "nir"]
    assert info["quant_type"] == "fp32"
    names = [c["name"] if isinstance(c, dict) else c for c in info["classes"]]
    assert names == ["water", "forest", "grassland", "cropland", "built_up", "bare_soil"]
    norm = info["normalization"]
    assert norm["mode"] == "zscore"
    assert len(norm["center"]) == 4 and len(norm["scale"]) == 4
    assert all(s > 0 for s in norm["scale"])


def test_evaluate_json(capsys, small_scene, trained_bundle, tmp_path: Path) -> None:
    scene, labels = small_scene
    twin = tmp_path / "twin"
    shutil.copytree(trained_bundle, twin)
    out_json = tmp_path / "eval.json"
    code, out, err = run(
        capsys,
        "evaluate",
        "--weights",
        trained_bundle,
        "--weights",
        twin,
        "--weights",
        trained_bundle,
        "--image",
        scene,
        "--labels",
        labels,
        "--json",
        out_json,
        "-q",
    )
    assert code == 0, err
    assert "accuracy" in out
    doc = json.loads(out_json.read_text())
    assert list(doc) == ["results"]
    results = doc["results"]
    assert [r["weights"] for r in results] == [str(trained_bundle), str(twin), str(trained_bundle)]
    weight_bytes = (trained_bundle / "weights.pt").stat().st_size
    for r in results:
        for key in (
            "weights",
            "quant_type",
            "accuracy",
            "macro_f1",
            "per_class_f1",
            "confusion",
            "size_bytes",
            "agreement",
            "cells",
            "latency_ms_per_batch",
        ):
            assert key in r, key
        assert r["quant_type"] == "fp32"
        assert 0.0 <= r["accuracy"] <= 1.0
        assert 0.0 <= r["macro_f1"] <= 1.0
        assert 0.0 <= r["agreement"] <= 1.0
        assert r["agreement"] == 1.0  # the same weights three times
        assert len(r["per_class_f1"]) == 6
        cm = np.asarray(r["confusion"])
        assert cm.shape == (6, 6)
        assert cm.sum() == r["cells"] > 0
        assert r["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert r["size_bytes"] == weight_bytes
        assert r["latency_ms_per_batch"] >= 0
    assert results[0]["accuracy"] == results[1]["accuracy"] == results[2]["accuracy"]
    assert results[0]["cells"] <= 8 * 8  # 512x512 at the default stride 64
    assert dot_files(tmp_path) == []


# --- bad input: exit 2, one line naming the file --------------------------------------------


def _train(b: SimpleNamespace, image=None, labels=None, output=None) -> list[object]:  # type: ignore[no-untyped-def]
    return [
        "train",
        "--image",
        image or b.scene,
        "--labels",
        labels or b.labels,
        "--output",
        output or (b.dir / "out" / "model"),
        *FAST_TRAIN,
    ]


def _evaluate(b: SimpleNamespace, bundle: Path, image=None, labels=None, json_path=None):  # type: ignore[no-untyped-def]
    args = [
        "evaluate",
        "--weights",
        bundle,
        "--image",
        image or b.scene,
        "--labels",
        labels or b.labels,
        "-q",
    ]
    return args + (["--json", json_path] if json_path else [])


TRAIN_CASES = {
    "missing-image": (lambda b: _train(b, image=b.missing), "missing"),
    "text-image": (lambda b: _train(b, image=b.text), "text"),
    "labels-size": (lambda b: _train(b, labels=b.labels_small), "labels_small"),
    "labels-transform": (lambda b: _train(b, labels=b.labels_shifted), "labels_shifted"),
    "labels-values": (lambda b: _train(b, labels=b.labels_nine), "labels_nine"),
    "labels-all-nodata": (lambda b: _train(b, labels=b.labels_empty), "labels_empty"),
    "output-parent-missing": (lambda b: _train(b, output=b.dir / "nope" / "m"), "nope_m"),
    "output-parent-is-file": (lambda b: _train(b, output=b.afile / "m"), "afile_m"),
    "missing-labels": (lambda b: _train(b, labels=b.missing), "missing"),
}

PATHS = {
    "missing": lambda b: b.missing,
    "text": lambda b: b.text,
    "labels_small": lambda b: b.labels_small,
    "labels_shifted": lambda b: b.labels_shifted,
    "labels_nine": lambda b: b.labels_nine,
    "labels_empty": lambda b: b.labels_empty,
    "nope_m": lambda b: b.dir / "nope" / "m",
    "afile_m": lambda b: b.afile / "m",
    "nope_json": lambda b: b.dir / "nope" / "e.json",
    "afile_json": lambda b: b.afile / "e.json",
    "three": lambda b: b.three,
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_bad_input(capsys, bad: SimpleNamespace, case: str) -> None:
    build, name = TRAIN_CASES[case]
    (bad.dir / "out").mkdir(exist_ok=True)
    before = sorted(p.name for p in bad.dir.iterdir())
    code, out, err = run(capsys, *build(bad))
    assert_one_line_error(code, out, err, PATHS[name](bad))
    assert sorted(p.name for p in bad.dir.iterdir()) == before
    assert list((bad.dir / "out").iterdir()) == []


EVALUATE_CASES = {
    "missing-image": (lambda b, m: _evaluate(b, m, image=b.missing), "missing"),
    "text-image": (lambda b, m: _evaluate(b, m, image=b.text), "text"),
    "labels-size": (lambda b, m: _evaluate(b, m, labels=b.labels_small), "labels_small"),
    "labels-transform": (lambda b, m: _evaluate(b, m, labels=b.labels_shifted), "labels_shifted"),
    "labels-values": (lambda b, m: _evaluate(b, m, labels=b.labels_nine), "labels_nine"),
    "labels-all-nodata": (lambda b, m: _evaluate(b, m, labels=b.labels_empty), "labels_empty"),
    "three-bands": (lambda b, m: _evaluate(b, m, image=b.three), "three"),
    "json-parent-missing": (
        lambda b, m: _evaluate(b, m, json_path=b.dir / "nope" / "e.json"),
        "nope_json",
    ),
    "json-parent-is-file": (
        lambda b, m: _evaluate(b, m, json_path=b.afile / "e.json"),
        "afile_json",
    ),
    "missing-bundle": (lambda b, m: _evaluate(b, b.missing), "missing"),
    "not-a-bundle": (lambda b, m: _evaluate(b, b.text), "text"),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_bad_input(capsys, bad, trained_bundle, three_band_scene, case: str) -> None:
    bad.three = three_band_scene[0]
    build, name = EVALUATE_CASES[case]
    before = sorted(p.name for p in bad.dir.iterdir())
    code, out, err = run(capsys, *build(bad, trained_bundle))
    assert_one_line_error(code, out, err, PATHS[name](bad))
    assert sorted(p.name for p in bad.dir.iterdir()) == before


def test_evaluate_band_mismatch_message(capsys, bad, trained_bundle, three_band_scene) -> None:
    code, out, err = run(capsys, *_evaluate(bad, trained_bundle, image=three_band_scene[0]))
    line = assert_one_line_error(code, out, err, three_band_scene[0])
    assert "3" in line and "4" in line and "--bands" in line


@pytest.mark.parametrize("where", ["parent-missing", "parent-is-file"])
def test_synth_bad_output(capsys, bad, where: str) -> None:
    out_dir = (bad.dir / "nope" / "s") if where == "parent-missing" else (bad.afile / "s")
    code, out, err = run(capsys, "synth", out_dir, "--width", 32, "--height", 32, "-q")
    assert_one_line_error(code, out, err, out_dir)
    assert not (bad.dir / "nope").exists()


def test_synth_out_dir_is_a_file_is_a_usage_error(capsys, bad) -> None:
    code, out, err = run(capsys, "synth", bad.afile, "--width", 32, "--height", 32, "-q")
    assert code == 2
    assert str(bad.afile) in err and "Traceback" not in err
    assert bad.afile.read_text() == "a regular file\n"


def test_info_on_bad_bundles(capsys, bad) -> None:
    for path in (bad.missing, bad.text, bad.dir):
        code, out, err = run(capsys, "info", path)
        assert_one_line_error(code, out, err, path)


def test_train_existing_output_is_refused(capsys, bad, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("x")
    code, out, err = run(capsys, *_train(bad, output=taken))
    assert_one_line_error(code, out, err, taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_unknown_arch_is_a_usage_error(capsys, bad) -> None:
    code, out, err = run(capsys, *_train(bad), "--arch", "resnet9000")
    assert code == 2
    assert "--arch" in err and "resnet9000" in err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "extra",
    [["--epochs", "0"], ["--val-fraction", "1.5"], ["--bands", "x"]],
    ids=["epochs-0", "val-fraction", "unknown-option"],
)
def test_bad_option_values_are_usage_errors(capsys, bad, extra: list[str]) -> None:
    code, out, err = run(capsys, *_train(bad), *extra)
    assert code == 2
    assert "Traceback" not in out + err


def test_inconsistent_train_options_are_refused_before_work(capsys, bad) -> None:
    # Each value passes its own check; together they are inconsistent (split block < tile).
    code, out, err = run(capsys, *_train(bad), "--split-block", "32")
    assert code == 2, err
    assert err.strip().startswith("Error:") and "split block" in err
    assert "Traceback" not in err


# --- nothing half-written after a failure -------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    ["labels-values", "labels-all-nodata", "text-image", "too-few-tiles", "batch-too-large"],
)
def test_failed_train_leaves_nothing(capsys, bad, tmp_path: Path, case: str) -> None:
    parent = tmp_path / "runs"
    parent.mkdir()
    output = parent / "model"
    args = {
        "labels-values": _train(bad, labels=bad.labels_nine, output=output),
        "labels-all-nodata": _train(bad, labels=bad.labels_empty, output=output),
        "text-image": _train(bad, image=bad.text, output=output),
        # one tile: no train/validation split possible
        "too-few-tiles": _train(bad, output=output) + ["--max-tiles", "1"],
        # sampling succeeds, then there are fewer training tiles than one batch
        "batch-too-large": _train(bad, output=output) + ["--batch-size", "100000"],
    }[case]
    code, out, err = run(capsys, *args)
    assert code == 2, err
    assert err.strip().startswith("Error:") and "Traceback" not in err
    assert list(parent.iterdir()) == []  # no bundle, no '.model.*' temporary


def test_too_few_tiles_for_a_split_names_the_labels(capsys, bad, tmp_path: Path) -> None:
    code, out, err = run(capsys, *_train(bad, output=tmp_path / "m"), "--max-tiles", "1")
    assert code == 2 and "train/validation split" in err  # the right failure ...
    assert_one_line_error(code, out, err, bad.labels)  # ... but which file?


def test_failed_save_leaves_no_temporary(capsys, bad, tmp_path: Path) -> None:
    # A regular file where the bundle folder should go, with --overwrite: training runs, the
    # final move fails. The file must be left as it was and no temporary may remain.
    target = tmp_path / "model"
    target.write_text("precious")
    code, out, err = run(capsys, *_train(bad, output=target), "--overwrite", "-q")
    assert code != 0
    assert target.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_train_output_that_is_a_file_is_bad_input(capsys, bad, tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.write_text("precious")
    code, out, err = run(capsys, *_train(bad, output=target), "--overwrite", "-q")
    assert_one_line_error(code, out, err, target)


# --- --config ---------------------------------------------------------------------------------


def test_config_sets_options_and_flags_win(capsys, tmp_path: Path) -> None:
    config = tmp_path / "synth.yaml"
    config.write_text("version: 1\nwidth: 40\nheight: 24\nbands: 3\nseed: 7\nquiet: true\n")
    out_dir = tmp_path / "s"
    code, out, err = run(capsys, "synth", out_dir, "--config", config, "--width", 32)
    assert code == 0, err
    with rasterio.open(out_dir / "scene.tif") as ds:
        assert (ds.width, ds.height, ds.count) == (32, 24, 3)  # flag beat the file's width
        assert ds.tags()["SYNTH_SEED"] == "7"


def test_config_flag_order_does_not_matter(capsys, tmp_path: Path) -> None:
    config = tmp_path / "synth.yaml"
    config.write_text("width: 40\nheight: 24\n")
    out_dir = tmp_path / "s"
    code, _, err = run(capsys, "synth", out_dir, "--width", 32, "--config", config, "-q")
    assert code == 0, err
    with rasterio.open(out_dir / "scene.tif") as ds:
        assert (ds.width, ds.height) == (32, 24)


def test_config_unknown_key_is_refused(capsys, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("width: 40\nwidht: 24\n")
    code, out, err = run(capsys, "synth", tmp_path / "s", "--config", config)
    assert_one_line_error(code, out, err, config, "widht")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("width: wide\n", "width"),
        ("version: 2\nwidth: 40\n", "version"),
        ("- a\n- b\n", "mapping"),
        ("width: [1\n", "YAML"),
    ],
    ids=["bad-type", "bad-version", "not-a-mapping", "broken-yaml"],
)
def test_config_invalid_is_refused(capsys, tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code, out, err = run(capsys, "synth", tmp_path / "s", "--config", config)
    assert_one_line_error(code, out, err, config, needle)


def test_config_missing_file_is_refused(capsys, tmp_path: Path) -> None:
    code, out, err = run(capsys, "synth", tmp_path / "s", "--config", tmp_path / "nope.yaml")
    assert code == 2
    assert "nope.yaml" in err and "Traceback" not in err


def test_config_with_a_section_per_command(capsys, small_scene, tmp_path: Path) -> None:
    scene, labels = small_scene
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "version: 1\n"
        "synth:\n  width: 48\n  height: 40\n  seed: 3\n  quiet: true\n"
        f"train:\n  image: {scene}\n  labels: {labels}\n  epochs: 1\n  split-block: 128\n"
        "  sample_stride: 32\n  max_tiles: 400\n  patience: 3\n  quiet: true\n"
        "evaluate:\n  stride: 32\n"
    )
    code, _, err = run(capsys, "synth", tmp_path / "s", "--config", config)
    assert code == 0, err
    with rasterio.open(tmp_path / "s" / "scene.tif") as ds:
        assert (ds.width, ds.height) == (48, 40)

    bundle = tmp_path / "model"
    code, out, err = run(capsys, "train", "--config", config, "--output", bundle, "--epochs", 2)
    assert code == 0, err
    meta = json.loads((bundle / "bundle.json").read_text())
    cfg = meta["training"]["config"]
    assert cfg["epochs"] == 2  # the flag wins
    assert cfg["split_block"] == 128 and cfg["sample_stride"] == 32
    assert cfg["max_tiles"] == 400 and cfg["patience"] == 3
    assert meta["training"]["epochs_run"] == 2


# --- --debug ------------------------------------------------------------------------------------


def test_errors_have_no_traceback_but_debug_shows_one(tmp_path: Path) -> None:
    missing = tmp_path / "no_bundle"
    done = run_cli_subprocess("info", missing)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and str(missing) in lines[0]
    assert "Traceback" not in done.stderr

    for args in (("--debug", "info", missing), ("info", missing, "--debug")):
        done = run_cli_subprocess(*args)
        assert done.returncode == 2
        assert "Traceback (most recent call last)" in done.stderr
        assert "BundleError" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("Error:")


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_stopped_run_cleans_up_and_says_so(tmp_path: Path, sig: str, code: int) -> None:
    import signal
    import subprocess
    import time

    from synth_helpers import cli_executable

    out = tmp_path / "scene"
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec (Python then keeps it so, as a program should). A caught one is reset to
    # the default, so SIGINT is caught here while the child starts, whatever ran pytest.
    caught = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [*cli_executable(), "synth", str(out), "--width", "2048", "--height", "2048",
             "--chunk", "16", "--workers", "1", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, caught)
    deadline = time.monotonic() + 60
    while not (out.is_dir() and dot_files(out)) and time.monotonic() < deadline:
        time.sleep(0.05)  # until it writes its temporaries
    assert out.is_dir() and dot_files(out), "synth never started writing"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(("Terminated", "Interrupted")), err
    assert not out.exists()  # no temporaries, no partial scene, not even the new folder


def test_usage_errors_are_one_line(capsys, small_scene, trained_bundle, tmp_path) -> None:
    for args in (
        ["predict", "--weights", trained_bundle, "--image", small_scene[0],
         "--output", tmp_path / "m.tif", "--stride", "0"],
        ["predict", "--image", small_scene[0]],
        ["frobnicate"],
    ):  # fmt: skip
        code, out, err = run(capsys, *args)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and "--help" in lines[0], err


def test_image_lists_and_literal_names(capsys, small_scene, trained_bundle, tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n   # indented comment\n\n")
    code, out, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", f"@{empty}",
        "--output", tmp_path / "maps", "-q",
    )  # fmt: skip
    assert_one_line_error(code, out, err, empty, "names no raster")
    odd = Path(shutil.copy(small_scene[0], tmp_path / "scene[1].tif"))  # glob characters
    code, _, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", odd,
        "--output", tmp_path / "odd.tif", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "odd.tif").is_file()
    code, out, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", odd, "--output", "", "-q"
    )
    assert_one_line_error(code, out, err, "--output", "empty")


# --- outputs that --overwrite must not destroy ----------------------------------------------------


def test_train_overwrite_refuses_a_folder_that_is_not_a_bundle(capsys, bad, tmp_path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    code, out, err = run(capsys, *_train(bad, output=folder), "--overwrite")
    assert_one_line_error(code, out, err, folder, "did not write")
    assert (folder / "notes.txt").read_text() == "precious"


def _copied(*paths: Path, into: Path) -> list[Path]:
    into.mkdir(exist_ok=True)
    return [Path(shutil.copy(p, into / p.name)) for p in paths]


def test_no_output_may_replace_or_hold_an_input(
    capsys, small_scene, trained_bundle, bundle_copy, tmp_path
) -> None:
    """Each command refuses, before any work, an output that would replace one of its inputs."""
    scene, labels = _copied(*small_scene, into=tmp_path / "data")
    before = {p: p.read_bytes() for p in (scene, labels)}
    evaluate = ["evaluate", "--weights", trained_bundle, "--image", scene, "--labels", labels]
    cases = {
        "evaluate --json onto the image": ([*evaluate, "--json", scene], scene, "is the input"),
        "evaluate --report around them": (
            [*evaluate, "--report", tmp_path / "data"],
            tmp_path / "data",
            "holds the input",
        ),
        "train --overwrite around them": (
            [
                *_train(SimpleNamespace(scene=scene, labels=labels), output=tmp_path / "data"),
                "--overwrite",
            ],
            tmp_path / "data",
            "holds the input",
        ),  # fmt: skip
        "predict onto its style file": (
            [
                "predict",
                "--weights",
                trained_bundle,
                "--image",
                scene,
                "--output",
                tmp_path / "map.qml",
            ],
            tmp_path / "map.qml",
            "QGIS style",
        ),  # fmt: skip
        "export over the bundle's weights": (
            [
                "export",
                "--weights",
                bundle_copy,
                "--format",
                "torchscript",
                "--output",
                bundle_copy / "weights.pt",
            ],
            bundle_copy / "weights.pt",
            "inside the bundle",
        ),  # fmt: skip
    }
    weights = (bundle_copy / "weights.pt").read_bytes()
    for name, (args, named, needle) in cases.items():
        code, out, err = run(capsys, *args)
        assert code == 2, name
        assert_one_line_error(code, out, err, named, needle)
    assert {p: p.read_bytes() for p in (scene, labels)} == before
    assert (bundle_copy / "weights.pt").read_bytes() == weights
    assert not (tmp_path / "map.qml").exists()


def test_predict_never_writes_over_its_weights(
    capsys, small_scene, trained_bundle, bundle_copy, tmp_path
):
    model = tmp_path / "model.onnx"
    export = ["export", "--weights", trained_bundle, "--format", "onnx", "--output", model]
    assert run(capsys, *export)[0] == 0
    before = model.read_bytes()
    code, out, err = run(
        capsys, "predict", "--weights", model, "--image", small_scene[0],
        "--output", model, "--overwrite", "-q",
    )  # fmt: skip
    assert_one_line_error(code, out, err, model, "is the input")
    assert model.read_bytes() == before
    # The files that make up a bundle given as --weights are inputs too; a new file beside
    # them (an evaluation's JSON, say) is not, and may be written again.
    weights = (bundle_copy / "weights.pt").read_bytes()
    code, out, err = run(
        capsys, "predict", "--weights", bundle_copy, "--image", small_scene[0],
        "--output", bundle_copy / "weights.pt", "--overwrite", "-q",
    )  # fmt: skip
    assert_one_line_error(code, out, err, bundle_copy / "weights.pt", "is the input")
    assert (bundle_copy / "weights.pt").read_bytes() == weights
    evaluate = ["evaluate", "--weights", bundle_copy, "--image", small_scene[0],
                "--labels", small_scene[1], "--json", bundle_copy / "eval.json", "-q"]  # fmt: skip
    for _ in range(2):
        code, _, err = run(capsys, *evaluate)
        assert code == 0, err


def test_the_bare_command_shows_its_help() -> None:
    done = run_cli_subprocess()
    assert done.returncode == 2
    assert done.stderr.startswith("Usage: georaster-quant") and "Commands:" in done.stderr


def test_a_batch_never_maps_over_another_input(capsys, small_scene, trained_bundle, tmp_path):
    folder = tmp_path / "tiles"
    [a] = _copied(small_scene[0], into=folder)
    b = Path(shutil.copy(a, folder / "scene_classes.tif"))  # the name of a's map
    code, out, err = run(
        capsys, "predict", "--weights", trained_bundle, "--image", folder / "*.tif",
        "--output", folder, "--overwrite", "-q",
    )  # fmt: skip
    assert_one_line_error(code, out, err, b, "is the input")
    assert b.read_bytes() == a.read_bytes()


def test_quantize_never_replaces_its_source_bundle(capsys, small_scene, bundle_copy, tmp_path):
    name = json.loads((bundle_copy / "bundle.json").read_text())["model_name"]
    source = bundle_copy.rename(tmp_path / f"{name}_fp16")  # where its fp16 bundle would go
    before = (source / "weights.pt").read_bytes()
    code, out, err = run(
        capsys, "quantize", "--weights", source, "--quant-type", "fp16",
        "--output", tmp_path, "--overwrite",
    )  # fmt: skip
    assert code == 2
    assert "is the input" in err
    assert (source / "weights.pt").read_bytes() == before


def test_overwriting_a_bundle_leaves_no_old_copy(capsys, bad, tmp_path) -> None:
    out = tmp_path / "m"
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, *_train(bad, output=out), "--no-onnx", *extra)
        assert code == 0, err
    assert dot_files(tmp_path) == []


def test_train_output_that_is_a_file_and_a_contradicted_class_count(capsys, bad, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, out, err = run(capsys, *_train(bad, output=afile))  # --overwrite would not help
    assert_one_line_error(code, out, err, afile, "is a file, the output is a folder")
    code, out, err = run(capsys, *_train(bad, output=tmp_path / "m"), "--num-classes", "2")
    assert_one_line_error(code, out, err, bad.labels, "names 6 classes, --num-classes says 2")
    assert not (tmp_path / "m").exists()


def test_labels_in_another_crs_are_refused(capsys, bad, tmp_path) -> None:
    other = tmp_path / "labels_32632.tif"
    with rasterio.open(bad.labels) as src:
        profile, data, tags = src.profile | {"crs": "EPSG:32632"}, src.read(), src.tags()
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
    code, out, err = run(capsys, *_train(bad, labels=other, output=tmp_path / "m"))
    assert_one_line_error(code, out, err, other, "EPSG:32632")
    assert not (tmp_path / "m").exists()


def test_demo_output_under_a_file_is_bad_input(capsys, tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, out, err = run(capsys, "demo", "--output", afile / "demo", "--size", 512, "-q")
    assert_one_line_error(code, out, err, afile / "demo")
