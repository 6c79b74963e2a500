"""Model bundles: save/load round trip and every refusal (DESIGN: "The bundle")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from georaster_quant import errors
from georaster_quant.bundle import (
    META_FILE,
    WEIGHTS_FILE,
    Bundle,
    build_fp32_model,
    read_meta,
    save_bundle,
    sha256_file,
)

#: Shared session fixtures (small_scene, trained_bundle, ...): see conftest_synth.py.
pytest_plugins = ["conftest_synth"]


def _edit_meta(bundle: Path, edit) -> None:  # type: ignore[no-untyped-def]
    path = bundle / META_FILE
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _record_weights(bundle: Path) -> None:
    """Make bundle.json's checksum and size match whatever weights.pt now holds."""
    weights = bundle / WEIGHTS_FILE

    def edit(meta: dict) -> None:
        meta["weights"]["sha256"] = sha256_file(weights)
        meta["weights"]["size_bytes"] = weights.stat().st_size

    _edit_meta(bundle, edit)


def _raw_batch(n: int = 8, bands: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(1, 6000, size=(n, bands, size, size)).astype(np.float32))


def _refused(path: Path, match: str | None = None) -> errors.BundleError:
    with pytest.raises(errors.BundleError, match=match) as info:
        Bundle(path)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message
    return info.value


# --- round trip ---------------------------------------------------------------------------------


def test_trained_bundle_layout(trained_bundle: Path) -> None:
    assert sorted(p.name for p in trained_bundle.iterdir()) == [META_FILE, WEIGHTS_FILE]
    meta = read_meta(trained_bundle)
    assert meta.model_name == trained_bundle.name
    assert meta.quant_type == "fp32"
    assert meta.weights is not None
    assert meta.weights.sha256 == sha256_file(trained_bundle / WEIGHTS_FILE)
    assert meta.weights.size_bytes == (trained_bundle / WEIGHTS_FILE).stat().st_size
    assert meta.input.band_names == ["blue", "green", "red", "nir"]
    assert meta.input.dtype == "uint16" and meta.input.nodata == 0
    assert meta.input.fill_values == meta.normalization.center
    assert len(meta.classes) == 6 and meta.classes[0].name == "water"
    assert meta.provenance.training_raster == "scene.tif"
    assert len(meta.provenance.training_raster_sha256) == 64


def test_save_load_round_trip_gives_identical_outputs(trained_bundle: Path, tmp_path: Path) -> None:
    meta = read_meta(trained_bundle)
    torch.manual_seed(123)
    model = build_fp32_model(meta)
    # Non-default values everywhere, BatchNorm running statistics included.
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.1 + tensor)
                if tensor.ndim == 1:
                    tensor.abs_()
    model.eval()
    saved = save_bundle(tmp_path / "rt", model, meta)
    assert saved.model_name == "rt"
    loaded = Bundle(tmp_path / "rt")
    assert loaded.meta == saved
    assert not loaded.model.training
    expected, got = model.state_dict(), loaded.model.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    x = _raw_batch()
    with torch.no_grad():
        assert torch.equal(model(x), loaded.model(x))


def test_loaded_bundle_reproduces_itself_after_resave(trained_bundle: Path, tmp_path: Path) -> None:
    first = Bundle(trained_bundle)
    save_bundle(tmp_path / "again", first.model, first.meta)
    second = Bundle(tmp_path / "again")
    x = _raw_batch(seed=1)
    with torch.no_grad():
        assert torch.equal(first.model(x), second.model(x))
    assert second.meta.normalization == first.meta.normalization
    assert second.meta.input == first.meta.input


def test_save_refuses_an_existing_path_unless_overwrite(
    trained_bundle: Path, tmp_path: Path
) -> None:
    b = Bundle(trained_bundle)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    with pytest.raises(errors.OutputPathError, match="already exists"):
        save_bundle(tmp_path / "taken", b.model, b.meta)
    assert (tmp_path / "taken" / "keep.txt").exists()
    # --overwrite replaces a bundle, never a folder of the user's (or the data in it).
    with pytest.raises(errors.OutputPathError, match="did not write"):
        save_bundle(tmp_path / "taken", b.model, b.meta, overwrite=True)
    assert (tmp_path / "taken" / "keep.txt").read_text() == "x"
    save_bundle(tmp_path / "bundle", b.model, b.meta)
    (tmp_path / "bundle" / "stale.txt").write_text("old")
    save_bundle(tmp_path / "bundle", b.model, b.meta, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [META_FILE, WEIGHTS_FILE]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_never_replaces_the_current_folder(
    trained_bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    b = Bundle(trained_bundle)
    save_bundle(tmp_path / "bundle", b.model, b.meta)
    monkeypatch.chdir(tmp_path / "bundle")
    with pytest.raises(errors.OutputPathError, match="current folder"):
        save_bundle(Path("."), b.model, b.meta, overwrite=True)
    assert (tmp_path / "bundle" / WEIGHTS_FILE).is_file()


def test_read_meta_does_not_import_torch(trained_bundle: Path) -> None:
    code = (
        "import sys\n"
        "from georaster_quant.bundle import read_meta\n"
        f"meta = read_meta({str(trained_bundle)!r})\n"
        "assert meta.quant_type == 'fp32'\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- refusals: metadata ---------------------------------------------------------------------


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path / "nope", "no such bundle")
    with pytest.raises(errors.BundleError):
        read_meta(tmp_path / "nope")


def test_file_instead_of_folder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text("{}")
    _refused(path, "not a bundle folder")


def test_missing_bundle_json_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / META_FILE).unlink()
    _refused(bundle_copy, META_FILE)


@pytest.mark.parametrize(
    "text",
    ["{not json", "", "\xff\xfe garbage", '{"kind": "georaster_quant.bundle",'],
    ids=["broken", "empty", "binary", "truncated"],
)
def test_garbage_json_is_refused(bundle_copy: Path, text: str) -> None:
    (bundle_copy / META_FILE).write_bytes(text.encode("latin-1"))
    _refused(bundle_copy)


@pytest.mark.parametrize(
    "content",
    [[1, 2, 3], "a string", {"kind": "something.else", "schema_version": 1}, {"schema_version": 1}],
    ids=["list", "string", "other-kind", "no-kind"],
)
def test_json_of_the_wrong_kind_is_refused(bundle_copy: Path, content: object) -> None:
    (bundle_copy / META_FILE).write_text(json.dumps(content))
    _refused(bundle_copy, "not a georaster_quant bundle")


@pytest.mark.parametrize("version", [99, 0, "1", None])
def test_unknown_schema_version_is_refused(bundle_copy: Path, version: object) -> None:
    _edit_meta(bundle_copy, lambda m: m.update(schema_version=version))
    _refused(bundle_copy, "schema version")


def test_class_count_mismatch_is_refused(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m["classes"].pop())
    err = _refused(bundle_copy, "invalid")
    assert "5 classes" in str(err)


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["normalization"]["center"].pop(),
        lambda m: m["input"].update(band_names=["blue"]),
        lambda m: m["normalization"].update(mode="magic"),
        lambda m: m["input"].pop("tile_size"),
        lambda m: m.update(unexpected_field=1),
        lambda m: m["weights"].update(sha256=None),
        lambda m: m["architecture"]["spec"].update(colour="blue"),
        lambda m: m["architecture"]["spec"].update(widths="64"),
        lambda m: m["input"].update(default_stride=0),
        lambda m: m["input"].update(default_stride=m["input"]["tile_size"] * 2),
        lambda m: m["input"].update(tile_size=0),
        lambda m: m["input"].update(tile_size=32, default_stride=32),
        lambda m: m["input"].update(dtype="bogus"),
        lambda m: m["input"].update(pixel_size=[0, 0]),
        lambda m: m["normalization"].update(clip=-1),
        lambda m: m["normalization"]["scale"].__setitem__(0, 0),
        lambda m: m["classes"][0].update(name="wa,ter"),
        lambda m: m["classes"][0].update(color=[300, 0, -1]),
    ],
    ids=[
        "center-count",
        "band-names-count",
        "norm-mode",
        "missing-field",
        "extra-field",
        "checksum-type",
        "arch-unknown-key",
        "arch-widths-type",
        "stride-zero",
        "stride-over-tile",
        "tile-zero",
        "tile-not-the-architectures",
        "dtype",
        "pixel-size",
        "clip",
        "scale-zero",
        "class-name-comma",
        "colour-range",
    ],
)
def test_invalid_fields_are_refused(bundle_copy: Path, edit) -> None:  # type: ignore[no-untyped-def]
    _edit_meta(bundle_copy, edit)
    _refused(bundle_copy, "invalid")


def test_no_weights_recorded_is_refused(bundle_copy: Path) -> None:
    _edit_meta(bundle_copy, lambda m: m.update(weights=None))
    _refused(bundle_copy, "no weights")


# --- refusals: weights ----------------------------------------------------------------------


def test_missing_weights_are_refused(bundle_copy: Path) -> None:
    (bundle_copy / WEIGHTS_FILE).unlink()
    _refused(bundle_copy, "missing")


def test_tampered_weights_are_refused(bundle_copy: Path) -> None:
    weights = bundle_copy / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    _refused(bundle_copy, "checksum")


def test_pickled_module_is_refused_even_with_a_matching_checksum(bundle_copy: Path) -> None:
    model = Bundle(bundle_copy).model
    torch.save(model, bundle_copy / WEIGHTS_FILE)  # a whole pickled nn.Module
    _record_weights(bundle_copy)
    _refused(bundle_copy, "refusing")


def test_truncated_weights_with_a_matching_checksum_are_refused(bundle_copy: Path) -> None:
    weights = bundle_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _record_weights(bundle_copy)
    _refused(bundle_copy, "not a readable weight file|refusing")


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: code that must never run on load."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(bundle_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = Bundle(bundle_copy).model.state_dict()
    weights = bundle_copy / WEIGHTS_FILE
    torch.save({**state, "extra": _Payload(str(marker))}, weights)
    _record_weights(bundle_copy)
    _refused(bundle_copy, "refusing")
    assert not marker.exists(), "code in the bundle ran"
    with pytest.raises(errors.BundleError):
        from georaster_quant.bundle import load_state_dict

        load_state_dict(bundle_copy, read_meta(bundle_copy))
    assert not marker.exists()
    # Control: the payload is live, an unsafe load would have run it.
    torch.load(weights, weights_only=False)
    assert marker.is_dir()


def test_non_dict_weights_are_refused(bundle_copy: Path) -> None:
    torch.save([torch.zeros(3)], bundle_copy / WEIGHTS_FILE)
    _record_weights(bundle_copy)
    _refused(bundle_copy, "not a state dict")


def test_weights_that_do_not_fit_the_architecture_are_refused(bundle_copy: Path) -> None:
    state = Bundle(bundle_copy).model.state_dict()
    state.popitem()
    torch.save(state, bundle_copy / WEIGHTS_FILE)
    _record_weights(bundle_copy)
    _refused(bundle_copy, "do not fit")


def test_truncated_weights_with_matching_checksum_are_refused(bundle_copy: Path) -> None:
    weights = bundle_copy / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:200])
    _record_weights(bundle_copy)
    _refused(bundle_copy)


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_weights_outside_the_bundle_are_refused(
    bundle_copy: Path, tmp_path: Path, where: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (bundle_copy / WEIGHTS_FILE).rename(outside / "w.pt")
    name = str(outside / "w.pt") if where == "absolute" else "../elsewhere/w.pt"
    _edit_meta(bundle_copy, lambda m: m["weights"].update(file=name))
    with pytest.raises(errors.BundleError):
        Bundle(bundle_copy)


def test_bundle_error_is_a_value_error() -> None:
    assert issubclass(errors.BundleError, errors.GeoRasterQuantError)
    assert issubclass(errors.BundleError, ValueError)
