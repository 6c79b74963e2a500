"""Export: self-describing TorchScript and ONNX files, their backends, parity, bad input."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from synth_helpers import run_cli

from georaster_quant import errors
from georaster_quant.backend import open_backend
from georaster_quant.bundle import Bundle
from georaster_quant.export import export_bundle, onnx_metadata, read_exported_meta
from georaster_quant.io import to_physical
from georaster_quant.quantized_bundle import QuantizeOptions, quantize_bundle

pytest_plugins = ["conftest_synth"]
run = run_cli


@pytest.fixture(scope="module")
def exported(trained_bundle, int8_bundle, tmp_path_factory):
    """``exported(kind, fmt)`` -> path of an exported file, made once per module."""
    folder = tmp_path_factory.mktemp("exported")
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, fmt: str) -> Path:
        if (kind, fmt) not in cache:
            source = trained_bundle if kind == "fp32" else int8_bundle
            suffix = ".onnx" if fmt == "onnx" else ".pt"
            result = export_bundle(source, fmt, folder / f"{kind}{suffix}")
            cache[kind, fmt] = Path(result["path"])
        return cache[kind, fmt]

    return get


@pytest.fixture(scope="module")
def raw_tiles(small_scene, trained_bundle) -> np.ndarray:
    """64 real tiles of the scene, read with plain rasterio, nodata filled."""
    meta = Bundle(trained_bundle).meta
    with rasterio.open(small_scene[0]) as src:
        a = src.read(window=((0, 512), (0, 512))).astype(np.float32)
    fill = np.asarray(meta.input.fill_values, np.float32)[:, None, None]
    a = np.where(a == 0, fill, a)
    return a.reshape(4, 8, 64, 8, 64).transpose(1, 3, 0, 2, 4).reshape(64, 4, 64, 64).copy()


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_files_carry_the_metadata(exported, trained_bundle, int8_bundle, kind, fmt):
    path = exported(kind, fmt)
    source = Bundle(trained_bundle if kind == "fp32" else int8_bundle).meta
    meta = read_exported_meta(path)
    assert meta.model_dump() == source.model_dump()
    assert meta.input.band_names == ["blue", "green", "red", "nir"]
    if fmt == "onnx":
        model = onnx.load(path)
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        props = {p.key: p.value for p in model.metadata_props}
        assert onnx_metadata(path) == props  # our wire-format reader agrees with onnx's
        assert props["quant_type"] == source.quant_type
        assert json.loads(props["fill_values"]) == source.input.fill_values
        assert json.loads(props["georaster_quant.export"])["source_weights_sha256"] == (
            source.weights_info.sha256
        )


@pytest.mark.parametrize("kind,minimum", [("fp32", 0.999), ("int8", 0.99)])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_decisions_match_the_bundle(
    exported, trained_bundle, int8_bundle, raw_tiles, kind, minimum, fmt
):
    source = open_backend(trained_bundle if kind == "fp32" else int8_bundle)
    backend = open_backend(exported(kind, fmt))
    assert backend.name == ("onnxruntime" if fmt == "onnx" else "torchscript")
    ref = source(raw_tiles).argmax(1)
    for batch in (1, 7, 64):  # the batch axis is dynamic
        got = np.concatenate(
            [backend(raw_tiles[i : i + batch]).argmax(1) for i in range(0, 64, batch)]
        )
        assert (got == ref).mean() >= minimum
    # a channels-last batch (what the runner gives torch backends) decides the same
    interleaved = to_physical(raw_tiles, channels_last=True)  # as predict reads it
    np.testing.assert_array_equal(backend(interleaved).argmax(1), backend(raw_tiles).argmax(1))


def test_torch_backend_runs_int8_exactly_as_the_eager_model(int8_bundle, raw_tiles) -> None:
    """The traced, frozen, fused form the torch backend runs gives the eager model's scores."""
    import torch

    from georaster_quant.backend import TorchBackend
    from georaster_quant.quantize import quiet

    bundle = Bundle(int8_bundle)
    backend = TorchBackend(bundle)
    assert isinstance(backend.model, torch.jit.ScriptModule)
    with quiet(), torch.inference_mode():
        eager = torch.softmax(bundle.model(torch.from_numpy(raw_tiles)), 1).numpy()
    interleaved = to_physical(raw_tiles, channels_last=True)  # as predict reads it
    for batch in (raw_tiles, interleaved, raw_tiles[:5]):
        np.testing.assert_array_equal(backend(batch), eager[: len(batch)])


def test_an_int8_backend_runs_on_its_own_engine(int8_bundle, raw_tiles) -> None:
    """Another engine selected meanwhile (a second bundle loaded) does not move its kernels."""
    import torch

    from georaster_quant.backend import TorchBackend

    backend = TorchBackend(Bundle(int8_bundle))
    ref = backend(raw_tiles)
    other = next(e for e in ("fbgemm", "onednn") if e != backend._engine)
    TorchBackend(Bundle(int8_bundle, engine=other))  # selects its engine as it loads
    assert torch.backends.quantized.engine == other
    np.testing.assert_array_equal(backend(raw_tiles), ref)
    assert torch.backends.quantized.engine == backend._engine


def test_int8_torchscript_runs_the_fused_input_quantization(exported) -> None:
    """The exported INT8 file quantizes its input in the fused form (no batch norm node)."""
    import torch

    from georaster_quant.quantize import quiet

    with quiet():
        module = torch.jit.load(os.fspath(exported("int8", "torchscript")))
    kinds = {node.kind() for node in module.inlined_graph.nodes()}
    assert "aten::addcmul" in kinds and "aten::quantize_per_tensor" in kinds
    assert "aten::batch_norm" not in kinds


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_torch_backends_feed_fp32_models_channels_last(
    trained_bundle, int8_bundle, raw_tiles, kind
) -> None:
    import torch

    from georaster_quant import backend as gb

    bundle = Bundle(trained_bundle if kind == "fp32" else int8_bundle)
    backend = gb.TorchBackend(bundle)
    assert backend.channels_last  # both ask the runner for channels-last batches
    x = gb._torch_batch(torch, raw_tiles[:4], backend._fp32_convolutions)
    assert x.is_contiguous(memory_format=torch.channels_last) == (kind == "fp32")
    # the layout changes the speed, not the decisions: same as the plain NCHW batch
    with torch.inference_mode():
        plain = bundle.model(torch.from_numpy(raw_tiles)).argmax(1).numpy()
    interleaved = to_physical(raw_tiles, channels_last=True)  # as predict reads it
    for batch in (raw_tiles, interleaved):
        assert (backend(batch).argmax(1) == plain).mean() >= 0.999


@pytest.mark.parametrize(
    ("quant_type", "details", "fp32_convs", "channels_last"),
    [
        ("fp32", {}, True, True),
        ("dynamic_int8", {}, True, True),  # only the head is INT8
        ("fp16", {"compute_dtype": "fp32"}, True, True),
        ("fp16", {"compute_dtype": "fp16"}, False, False),
        ("per_channel_int8", {}, False, True),  # the fused input quantization reads it
        ("qat_int8", {}, False, True),
    ],
)
def test_which_models_get_channels_last_batches(
    trained_bundle, quant_type, details, fp32_convs, channels_last
) -> None:
    from georaster_quant import backend as gb
    from georaster_quant.bundle import read_meta

    meta = read_meta(trained_bundle)
    q = meta.quantization.model_copy(update={"type": quant_type, "details": details})
    meta = meta.model_copy(update={"quantization": q})
    assert gb._fp32_convolutions(meta) == fp32_convs
    assert gb._channels_last(meta) == channels_last


def _clean_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """A Python without this package: no site processing (so no editable install), only the
    site-packages folders on the path, run away from the repository."""
    paths = [p for p in site.getsitepackages() if "site-packages" in p]
    prelude = f"import sys; sys.path[:0] = {paths!r}\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", prelude + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
    )


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_files_run_in_a_clean_interpreter_without_the_package(
    exported, trained_bundle, int8_bundle, small_scene, tmp_path, kind
):
    ts, ox = exported(kind, "torchscript"), exported(kind, "onnx")
    code = f"""
import json, numpy as np, rasterio, onnxruntime as ort
try:
    import georaster_quant
    raise SystemExit("georaster_quant is importable")
except ImportError:
    pass
sess = ort.InferenceSession({str(ox)!r}, providers=["CPUExecutionProvider"])
meta = json.loads(sess.get_modelmeta().custom_metadata_map["georaster_quant"])
fill = np.array(meta["input"]["fill_values"], np.float32)[:, None, None]
with rasterio.open({str(small_scene[0])!r}) as src:
    a = src.read(window=((64, 320), (0, 256))).astype(np.float32)
a = np.where(a == src.nodata, fill, a)
tiles = a.reshape(4, 4, 64, 4, 64).transpose(1, 3, 0, 2, 4).reshape(16, 4, 64, 64).copy()
onnx_dec = sess.run(None, {{"input": tiles}})[0].argmax(1)
import torch
if meta["quantization"]["type"] != "fp32":
    torch.backends.quantized.engine = meta["quantization"]["engine"]
extra = {{"georaster_quant.json": ""}}
m = torch.jit.load({str(ts)!r}, _extra_files=extra)
assert json.loads(extra["georaster_quant.json"])["model_name"] == meta["model_name"]
ts_dec = m(torch.from_numpy(tiles)).argmax(1).numpy()
print(json.dumps({{"onnx": onnx_dec.tolist(), "torchscript": ts_dec.tolist()}}))
"""
    res = _clean_python(code, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    with rasterio.open(small_scene[0]) as src:
        a = src.read(window=((64, 320), (0, 256))).astype(np.float32)
    backend = open_backend(trained_bundle if kind == "fp32" else int8_bundle)
    fill = np.asarray(backend.meta.input.fill_values, np.float32)[:, None, None]
    a = np.where(a == 0, fill, a)
    tiles = a.reshape(4, 4, 64, 4, 64).transpose(1, 3, 0, 2, 4).reshape(16, 4, 64, 64).copy()
    ref = backend(tiles).argmax(1)
    for name in ("onnx", "torchscript"):
        assert (np.array(got[name]) == ref).mean() >= (1.0 if kind == "fp32" else 15 / 16), name


def test_onnxruntime_backend_imports_neither_torch_nor_onnx(
    exported, bundle_copy, raw_tiles, tmp_path
):
    """Start-up counts in every batch job: torch and the onnx package are not loaded."""
    path = exported("fp32", "onnx")
    export_bundle(bundle_copy, "onnx")
    np.save(tmp_path / "x.npy", raw_tiles[:4])
    code = (
        "import sys, numpy as np\n"
        "from georaster_quant.backend import open_backend, read_model_meta\n"
        f"read_model_meta({str(path)!r})\n"
        f"for w in ({str(path)!r}, {str(bundle_copy)!r}):\n"
        "    b = open_backend(w)\n"
        "    assert b.name == 'onnxruntime'\n"
        f"    p = b(np.load({str(tmp_path / 'x.npy')!r}))\n"
        "    assert p.shape == (4, 6) and np.allclose(p.sum(1), 1, atol=1e-5)\n"
        "print(sorted({'torch', 'onnx'} & set(sys.modules)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b"",
        lambda b: b[: len(b) // 2],
        lambda b: b"not an onnx file\n" * 8,
        lambda b: b"\x70\x05" + b,  # metadata_props (field 14) as a number
        lambda b: b"\x72\x02\x08\x05" + b,  # a metadata key as a number
    ],
)
def test_unreadable_onnx_file_is_a_bundle_error(exported, tmp_path, damage):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(damage(exported("fp32", "onnx").read_bytes()))
    with pytest.raises(errors.BundleError, match=r"bad.onnx: not a readable ONNX model"):
        onnx_metadata(bad)


def test_evaluate_and_info_take_exported_files(
    capsys, exported, trained_bundle, small_scene, tmp_path
):
    scene, labels = small_scene
    out = tmp_path / "eval.json"
    code, _, err = run(
        capsys,
        "evaluate",
        "--weights",
        trained_bundle,
        "--weights",
        exported("fp32", "onnx"),
        "--weights",
        exported("fp32", "torchscript"),
        "--weights",
        exported("int8", "onnx"),
        "--image",
        scene,
        "--labels",
        labels,
        "--stride",
        "32",
        "--json",
        out,
        "-q",
    )
    assert code == 0, err
    results = json.loads(out.read_text())["results"]
    assert [r["backend"] for r in results] == ["torch", "onnxruntime", "torchscript", "onnxruntime"]
    assert results[1]["agreement"] >= 0.999 and results[2]["agreement"] >= 0.999
    assert results[3]["quant_type"] == "per_channel_int8" and results[3]["agreement"] >= 0.97
    code, out_text, _ = run(capsys, "info", exported("int8", "onnx"), "--json")
    info = json.loads(out_text)
    assert info["quant_type"] == "per_channel_int8" and info["bands"] == 4
    assert info["band_names"] == ["blue", "green", "red", "nir"]
    assert info["size_bytes"] == exported("int8", "onnx").stat().st_size  # the file's own


def test_info_says_when_the_weight_file_is_missing(capsys, bundle_copy):
    (bundle_copy / "weights.pt").unlink()
    code, out, err = run(capsys, "info", bundle_copy)
    assert code == 0 and "MISSING" in out, err


def test_export_command_default_output_inside_the_bundle(capsys, bundle_copy):
    code, out, err = run(capsys, "export", "--weights", bundle_copy, "--format", "onnx")
    assert code == 0, err
    assert (bundle_copy / "model.onnx").is_file()
    assert "wrote" in out and "match the bundle" in out


# --------------------------------------------------------------------------- bad input


def _one_line_error(code, err, *names):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    for n in names:
        assert str(n) in lines[0], lines[0]


def test_unknown_format_is_a_usage_error(capsys, trained_bundle):
    code, _, err = run(capsys, "export", "--weights", trained_bundle, "--format", "tflite")
    assert code == 2 and "tflite" in err


def test_int8_torchscript_backend_prints_no_torch_deprecation_notice(exported, small_scene):
    # torch.jit.load of quantized tensors prints a C++ warning straight to stderr.
    code = (
        "import sys, numpy as np; from georaster_quant.backend import open_backend; "
        "b = open_backend(sys.argv[1]); b(np.full((2, 4, 64, 64), 900, np.float32)); print('ran')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(exported("int8", "torchscript"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout == "ran\n", done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "m.onnx"), ("onnx", "m.pt")])
def test_output_name_must_fit_the_format(capsys, trained_bundle, tmp_path, fmt, name):
    target = tmp_path / name
    code, _, err = run(
        capsys, "export", "--weights", trained_bundle, "--format", fmt, "--output", target
    )
    _one_line_error(code, err, target)
    assert ".tmp" not in err and not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing", "file"])
def test_bad_output_folder(capsys, trained_bundle, tmp_path, where):
    parent = tmp_path / "nope"
    if where == "file":
        parent.write_text("a file")
    target = parent / "m.onnx"
    code, _, err = run(
        capsys, "export", "--weights", trained_bundle, "--format", "onnx", "--output", target
    )
    _one_line_error(code, err, target)
    assert not target.exists()


def test_exported_file_without_our_metadata(capsys, trained_bundle, small_scene, tmp_path):
    import torch

    model = Bundle(trained_bundle).model
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 4, 64, 64),),
        plain,
        dynamo=False,
        opset_version=17,
        input_names=["input"],
    )
    code, _, err = run(
        capsys,
        "evaluate",
        "--weights",
        plain,
        "--image",
        small_scene[0],
        "--labels",
        small_scene[1],
    )
    _one_line_error(code, err, plain, "georaster_quant")
    with pytest.raises(errors.BundleError, match="missing key"):
        read_exported_meta(plain)


def test_band_count_mismatch_with_an_exported_model(capsys, exported, three_band_scene):
    code, _, err = run(
        capsys,
        "evaluate",
        "--weights",
        exported("fp32", "onnx"),
        "--image",
        three_band_scene[0],
        "--labels",
        three_band_scene[1],
    )
    _one_line_error(code, err, three_band_scene[0])
    assert "--bands" in err


def test_backend_that_does_not_fit_the_file(capsys, exported, small_scene):
    code, _, err = run(
        capsys,
        "evaluate",
        "--weights",
        exported("fp32", "onnx"),
        "--backend",
        "torchscript",
        "--image",
        small_scene[0],
        "--labels",
        small_scene[1],
    )
    _one_line_error(code, err, "onnxruntime")


def test_auto_prefers_an_up_to_date_onnx_export_inside_the_bundle(bundle_copy, raw_tiles):
    assert open_backend(bundle_copy).name == "torch"
    export_bundle(bundle_copy, "onnx")
    assert open_backend(bundle_copy).name == "onnxruntime"
    assert open_backend(bundle_copy, "torch").name == "torch"
    ref = open_backend(bundle_copy, "torch")(raw_tiles).argmax(1)
    assert (open_backend(bundle_copy)(raw_tiles).argmax(1) == ref).mean() >= 0.999
    # The bundle's own TorchScript export runs when asked for by name.
    export_bundle(bundle_copy, "torchscript")
    assert open_backend(bundle_copy, "torchscript").name == "torchscript"
    # A weights file replaced after the export: the stale exports are not run, and torch
    # refuses the bundle whose weights no longer match its record.
    weights = bundle_copy / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(errors.BundleError, match="checksum"):
        open_backend(bundle_copy)
    with pytest.raises(errors.ConfigError, match="export it first"):
        open_backend(bundle_copy, "torchscript")
    # So is a record changed after the export (weights retrained in place, say).
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    meta["weights"]["sha256"] = "0" * 64
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    from georaster_quant.backend import _exported_beside

    assert _exported_beside(bundle_copy) is None


@pytest.mark.parametrize("quant_type", ["fp16", "dynamic_int8"])
def test_fp16_and_dynamic_bundles_export_to_torchscript(
    trained_bundle, raw_tiles, tmp_path, quant_type
):
    opts = QuantizeOptions(quant_type)
    bundle = Path(quantize_bundle(trained_bundle, opts, tmp_path / "q")["bundle"])
    path = Path(export_bundle(bundle, "torchscript", tmp_path / "m.pt")["path"])
    ref = open_backend(bundle)(raw_tiles).argmax(1)
    assert (open_backend(path)(raw_tiles).argmax(1) == ref).mean() >= 0.99
    if quant_type == "dynamic_int8":
        with pytest.raises(errors.ConfigError, match="TorchScript only"):
            export_bundle(bundle, "onnx", tmp_path / "m.onnx")


def _moved_clip_runs(before: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``before`` and of its copy with the clip moved (one), in ONNX Runtime."""
    import onnxruntime as ort

    from georaster_quant.export import clip_after_quantize

    after = onnx.ModelProto()
    after.CopyFrom(before)
    assert clip_after_quantize(after.graph) == 1
    assert clip_after_quantize(after.graph) == 0  # nothing left to move
    onnx.checker.check_model(after)
    return [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, feeds
        )[0]
        for m in (before, after)
    ]


def test_int8_onnx_clips_its_quantized_input(int8_bundle, raw_tiles, exported) -> None:
    """The clip of the normalized bands runs on 8-bit values, with exactly the same results."""
    from georaster_quant.export import torch_onnx_graph

    produced_by = {}
    for node in onnx.load(exported("int8", "onnx")).graph.node:
        produced_by.update(dict.fromkeys(node.output, node.op_type))
        if node.op_type == "Clip":
            assert produced_by[node.input[0]] == "QuantizeLinear"
    bundle = Bundle(int8_bundle)
    x = raw_tiles.copy()
    x[:8, :, :16] = -1e6  # far below every band's clip
    x[8:16, :, :16] = 1e6  # far above
    x[16:24] = np.linspace(-5e4, 5e4, x[16:24].size, dtype=np.float32).reshape(x[16:24].shape)
    runs = _moved_clip_runs(torch_onnx_graph(bundle, raw_tiles), {"input": x})
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("zero_point", [np.uint8(128), np.int8(-3)])
@pytest.mark.parametrize("bounds", [(-1.0, 1.0), (None, 1.0), (-1.0, None)])
def test_clip_after_quantize_keeps_both_bounds(zero_point, bounds) -> None:
    """On a graph where both bounds bite on the 8-bit values, the moved clip gives the same."""
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(0.01, np.float32), "scale")]
    consts.append(numpy_helper.from_array(np.array(zero_point), "zp"))
    names = []
    for side, value in zip(("lo", "hi"), bounds, strict=True):
        names.append("" if value is None else side)
        if value is not None:
            consts.append(numpy_helper.from_array(np.array(value, np.float32), side))
    graph = helper.make_graph(
        [
            helper.make_node("Clip", ["x", *names], ["clipped"]),
            helper.make_node("QuantizeLinear", ["clipped", "scale", "zp"], ["q"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [
            helper.make_tensor_value_info(
                "q", helper.np_dtype_to_tensor_dtype(zero_point.dtype), ["n"]
            )
        ],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = _moved_clip_runs(model, {"x": np.linspace(-3, 3, 6001, dtype=np.float32)})
    np.testing.assert_array_equal(q[0], q[1])
    # each given bound bites inside the 8-bit range, so a lost or wrong bound would show
    z = int(zero_point)
    assert (q[1].min() == z - 100) == (bounds[0] is not None)
    assert (q[1].max() == z + 100) == (bounds[1] is not None)


@pytest.mark.parametrize("edit", ["fewer_classes", "fewer_bands"])
def test_a_file_that_does_not_fit_its_metadata_is_refused(exported, tmp_path, edit):
    """Metadata edited to disagree with the graph: a one-line error, not wrong maps."""
    from georaster_quant.export import META_KEY

    model = onnx.load(exported("fp32", "onnx"))
    props = {p.key: p for p in model.metadata_props}
    meta = json.loads(props[META_KEY].value)
    if edit == "fewer_classes":
        meta["classes"] = meta["classes"][:3]
        meta["architecture"]["num_classes"] = 3
        needle = "gives 6 class scores, its metadata lists 3"
    else:
        for key in ("bands", "band_names", "fill_values"):
            meta["input"][key] = meta["input"][key][:3]
        for key in ("center", "scale"):
            meta["normalization"][key] = meta["normalization"][key][:3]
        meta["architecture"]["in_channels"] = 3
        needle = "does not run on the 3-band 64x64 tiles"
    props[META_KEY].value = json.dumps(meta)
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    with pytest.raises(errors.BundleError, match=needle):
        open_backend(path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_damaged_export_is_refused(trained_bundle, tmp_path, fmt):
    """Bit rot in the model part of an exported file: refused, not run into a wrong map."""
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    path = Path(export_bundle(trained_bundle, fmt, tmp_path / f"m{suffix}")["path"])
    assert read_exported_meta(path).quant_type == "fp32"  # as exported, it checks out
    data = bytearray(path.read_bytes())
    # A byte inside the weights: the middle of the largest stored tensor.
    if fmt == "onnx":
        model = onnx.load(path)
        raw = max((t.raw_data for t in model.graph.initializer), key=len)
        at = bytes(data).index(raw) + len(raw) // 2
    else:
        import zipfile

        with zipfile.ZipFile(path) as zf:
            info = max(  # the largest stored tensor (frozen models keep them as constants)
                (i for i in zf.infolist() if "/extra/" not in i.filename), key=lambda i: i.file_size
            )
            raw = zf.read(info)
        at = bytes(data).index(raw) + len(raw) // 2
    data[at] ^= 0x40
    damaged = tmp_path / f"damaged{path.suffix}"
    damaged.write_bytes(bytes(data))
    for load in (read_exported_meta, open_backend):
        with pytest.raises(errors.BundleError, match="changed or damaged|is damaged"):
            load(damaged)
    # A damaged export inside a bundle is passed over: the bundle runs on torch.
    bundle = tmp_path / "bundle"
    shutil.copytree(trained_bundle, bundle)
    damaged.rename(bundle / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt"))
    assert open_backend(bundle).name == "torch"
