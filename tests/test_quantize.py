"""Quantization at the unit level: ``georaster_quant.quantize`` and ``georaster_quant.calibration``.

Everything is real: the model is the small FP32 bundle trained once per session on a synthetic
scene (``conftest_synth``), calibration tiles are read from synthetic GeoTIFFs, and the
quantized modules are built with torch's eager quantization (fbgemm).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from synth_helpers import _cached, make_scene

from georaster_quant import quantize as q
from georaster_quant.bundle import Bundle, build_fp32_model
from georaster_quant.calibration import (
    CalibrationDataReader,
    choose_calibration_tiles,
    scan_candidates,
    standardize,
)
from georaster_quant.errors import ConfigError, TrainingDataError
from georaster_quant.io import RasterReader
from georaster_quant.model import BandNormalize, NormalizeQuantize
from georaster_quant.quantize import QuantConfig
from georaster_quant.sampling import sample_tiles
from georaster_quant.training import run_epoch

#: Shared session fixtures (small_scene, trained_bundle, ...): see conftest_synth.py.
pytest_plugins = ["conftest_synth"]

CONVS = ["blocks.0.conv", "blocks.1.conv", "blocks.2.conv"]
LAYERS = [*CONVS, "head"]

#: The scene with about 2 % cloudy tiles: 1024 x 1024, seed 0 has 5 of its 256 grid tiles
#: (1.95 %) with a mean raw reflectance over bands above 3000 (seeds 0-15 scanned: 0 %-7 %).
CLOUD_SEED = 0
CLOUD_SIZE = 1024
CLOUDY_DN = 3000


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fp32(trained_bundle: Path) -> Bundle:
    """The shared FP32 bundle, loaded."""
    return Bundle(trained_bundle)


@pytest.fixture(scope="module")
def calib_tiles(fp32: Bundle, small_scene: tuple[Path, Path]) -> np.ndarray:
    """32 diverse calibration tiles of the training scene (raw values, nodata filled)."""
    return choose_calibration_tiles([small_scene[0]], fp32.meta, 32).tiles


@pytest.fixture(scope="module")
def cloud_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1024 x 1024 seed-0 scene (about 2 % cloudy tiles)."""
    return _cached(
        "cloud_scene_1024_seed0",
        lambda: make_scene(
            tmp_path_factory.mktemp("cloud") / "scene", CLOUD_SIZE, CLOUD_SIZE, 4, CLOUD_SEED
        ),
    )[0]


def grid_tiles(path: Path, fill: np.ndarray, tile: int = 64) -> np.ndarray:
    """Every full grid tile of a raster as raw float32 values, nodata (0) filled."""
    with rasterio.open(path) as ds:
        a = ds.read().astype(np.float32)
    c, h, w = a.shape
    a = np.where(a == 0, fill[:, None, None], a)
    t = a[:, : h - h % tile, : w - w % tile].reshape(c, h // tile, tile, w // tile, tile)
    return np.ascontiguousarray(t.transpose(1, 3, 0, 2, 4).reshape(-1, c, tile, tile))


@pytest.fixture(scope="module")
def eval_tiles(fp32: Bundle, cloud_scene: Path) -> np.ndarray:
    """The 256 grid tiles of the 1024 x 1024 scene: real tiles to compare decisions on."""
    return grid_tiles(cloud_scene, np.asarray(fp32.meta.input.fill_values, np.float32))


@pytest.fixture(scope="module")
def fp32_decisions(fp32: Bundle, eval_tiles: np.ndarray) -> np.ndarray:
    return q.run(fp32.model, eval_tiles).argmax(1).numpy()


@pytest.fixture(scope="module")
def qat_tiles(fp32: Bundle, small_scene: tuple[Path, Path]):
    """64 labelled training tiles for short QAT fine-tuning runs."""
    scene, labels = small_scene
    with RasterReader(scene) as img, RasterReader(labels) as lab:
        return sample_tiles(
            img,
            lab,
            tile_size=fp32.meta.input.tile_size,
            stride=32,
            label_footprint=fp32.meta.input.label_footprint,
            num_classes=len(fp32.meta.classes),
            max_tiles=64,
            seed=0,
        )


def agreement(module: Any, tiles: np.ndarray, ref: np.ndarray) -> float:
    return float((q.run(module, tiles).argmax(1).numpy() == ref).mean())


def quick_fine_tune(tiles, fill: np.ndarray):
    """A QAT fine-tune callback: one warm-up epoch, freeze, one more epoch (batch 16)."""

    def fine_tune(prepared: torch.nn.Module, freeze) -> None:
        torch.manual_seed(0)  # dropout
        opt = torch.optim.AdamW(prepared.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        run_epoch(prepared, opt, tiles, fill, 16, rng)
        freeze(prepared)
        run_epoch(prepared, opt, tiles, fill, 16, rng)

    return fine_tune


@pytest.fixture(scope="module")
def quantized(fp32: Bundle, calib_tiles: np.ndarray, qat_tiles):
    """Factory: ``quantized(quant_type, **config)`` -> QuantResult, built once per setting."""
    cache: dict[tuple, q.QuantResult] = {}
    fill = np.asarray(fp32.meta.input.fill_values, np.float32)

    def get(quant_type: str, **kw: Any) -> q.QuantResult:
        key = (quant_type, tuple(sorted(kw.items())))
        if key not in cache:
            cfg = QuantConfig(quant_type, **kw)
            reader = CalibrationDataReader(calib_tiles, 16)
            tune = quick_fine_tune(qat_tiles, fill) if quant_type == "qat_int8" else None
            cache[key] = q.quantize(fp32.model, reader, cfg, fine_tune=tune)
        return cache[key]

    return get


# --------------------------------------------------------------------------- weight qschemes


@pytest.mark.parametrize(
    ("quant_type", "prefix"),
    [("static_int8", "per_tensor_"), ("per_channel_int8", "per_channel_")],
)
def test_static_weight_qscheme_of_every_layer(quantized, fp32, quant_type, prefix) -> None:
    before = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    res = quantized(quant_type)
    kinds = q.layer_kinds(res.module)
    assert kinds == dict.fromkeys(LAYERS, "int8"), kinds
    schemes = q.qschemes(res.module)
    assert sorted(schemes) == sorted(LAYERS), schemes
    wrong = {k: v for k, v in schemes.items() if not v.startswith(prefix)}
    assert not wrong, f"{quant_type}: layers without a {prefix}* weight qscheme: {wrong}"
    assert res.details["layers"] == kinds
    # The source model is left untouched.
    after = fp32.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any("quantized" in type(m).__module__ for m in fp32.model.modules())


def test_per_tensor_and_per_channel_really_differ(quantized) -> None:
    """torch's default fbgemm qconfig is per channel: the per-tensor type must not be."""
    kinds = set(q.qschemes(quantized("static_int8").module).values()) | set(
        q.qschemes(quantized("per_channel_int8").module).values()
    )
    assert any(k.startswith("per_tensor_") for k in kinds), kinds
    assert any(k.startswith("per_channel_") for k in kinds), kinds


# --------------------------------------------------------------------------- FP32 normalization


@pytest.mark.parametrize("quant_type", ["static_int8", "per_channel_int8", "dynamic_int8", "fp16"])
def test_normalization_stays_fp32(quantized, fp32, quant_type: str) -> None:
    module = quantized(quant_type).module
    assert type(module.normalize) is BandNormalize
    buffers = dict(module.normalize.named_buffers())
    assert set(buffers) == {"center", "inv_scale", "unit_var"}
    for name, buf in buffers.items():
        assert buf.dtype == torch.float32, (name, buf.dtype)
        assert torch.equal(buf, getattr(fp32.model.normalize, name))
    assert module.normalize.clip == fp32.model.normalize.clip


def test_per_channel_decisions_agree_with_fp32(quantized, eval_tiles, fp32_decisions) -> None:
    res = quantized("per_channel_int8")
    share = agreement(res.module, eval_tiles, fp32_decisions)
    assert share >= 0.95, f"per_channel_int8 agrees with FP32 on only {share:.1%} of tiles"


# --------------------------------------------------------------------------- inference form


@pytest.mark.parametrize("quant_type", ["static_int8", "per_channel_int8"])
def test_fused_input_quantization_gives_the_same_values(quantized, eval_tiles, quant_type) -> None:
    """Normalize, clip and quantize fused: the same uint8 values, outliers and layouts alike."""
    module = quantized(quant_type).module
    fused = q.inference_form(module)
    assert type(fused.normalize) is NormalizeQuantize
    assert type(module.normalize) is BandNormalize  # the bundle's own module is untouched
    assert fused.blocks is module.blocks  # the layers are shared, not copied
    x = torch.from_numpy(eval_tiles[:16].copy())
    x[:4] *= 8  # far above the clip
    x[4:8] *= -8  # far below it
    with q.quiet(), torch.inference_mode():
        ref = module.quant(module.normalize(x))
        s, z, clip = ref.q_scale(), ref.q_zero_point(), module.normalize.clip
        top = min(255, round(clip / s) + z)
        assert top < 255 and (ref.int_repr() == top).any()  # the clip bites on these tiles
        logits = module(x)
        for batch in (x, x.contiguous(memory_format=torch.channels_last)):
            got = fused.normalize(batch)
            assert got.is_contiguous(memory_format=torch.channels_last)
            assert (got.q_scale(), got.q_zero_point()) == (s, z)
            assert torch.equal(got.int_repr(), ref.int_repr())
            assert torch.equal(fused(batch), logits)


def test_only_a_quantized_input_is_fused(quantized, fp32) -> None:
    assert q.inference_form(fp32.model) is fp32.model
    for quant_type in ("dynamic_int8", "fp16"):
        module = quantized(quant_type).module
        assert q.inference_form(module) is module
    # the first block kept in FP32: the model's input is never quantized
    kept = quantized("static_int8", fp32_layers=("blocks.0",)).module
    assert q.inference_form(kept) is kept


# --------------------------------------------------------------------------- FP32 layers, config


def test_fp32_layers_stay_float_and_run(quantized, eval_tiles, fp32_decisions) -> None:
    res = quantized("static_int8", fp32_layers=("blocks.1", "head"))
    kinds = res.details["layers"]
    assert kinds == q.layer_kinds(res.module)
    float_layers = {k for k, v in kinds.items() if v == "float32"}
    int8_layers = {k for k, v in kinds.items() if v == "int8"}
    assert float_layers | int8_layers == set(kinds)
    assert float_layers and all(k.startswith(("blocks.1.", "head")) for k in float_layers), kinds
    assert any(k.startswith("blocks.1.") for k in float_layers), kinds
    assert any(k.startswith("head") for k in float_layers), kinds
    # A quantized block after an FP32 one is wrapped with a QuantStub (blocks.2.1.conv).
    assert {".".join(k.split(".")[:2]) for k in int8_layers} == {"blocks.0", "blocks.2"}, kinds
    logits = q.run(res.module, eval_tiles)
    assert logits.shape == (len(eval_tiles), 6)
    assert torch.isfinite(logits).all()
    assert agreement(res.module, eval_tiles, fp32_decisions) >= 0.9


@pytest.mark.parametrize("layers", [("blocks.7",), ("head", "tail"), ("blocks.1.conv",)])
def test_unknown_fp32_layer_is_a_config_error(fp32, calib_tiles, layers) -> None:
    cfg = QuantConfig("static_int8", fp32_layers=layers)
    with pytest.raises(ConfigError, match="unknown layer"):
        cfg.check(fp32.model)
    with pytest.raises(ConfigError, match="unknown layer"):
        q.quantize(fp32.model, CalibrationDataReader(calib_tiles, 16), cfg)


def test_engine_not_available_names_the_available_ones() -> None:
    have = q.supported_engines()
    missing = [e for e in q.ENGINES if e not in have]
    if not missing:
        pytest.skip(f"all of {', '.join(q.ENGINES)} are available in this torch build on this CPU")
    with pytest.raises(ConfigError) as info:
        QuantConfig("static_int8", engine=missing[0]).check()
    message = str(info.value)
    assert missing[0] in message
    for engine in have:
        assert engine in message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"quant_type": "int4"}, "unknown quant type 'int4'"),
        ({"quant_type": "fp32"}, "unknown quant type 'fp32'"),
        ({"quant_type": "static_int8", "observer": "percentile"}, "unknown observer"),
        ({"quant_type": "static_int8", "engine": "tensorrt"}, "unknown engine"),
    ],
)
def test_unknown_settings_are_config_errors(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        QuantConfig(**kwargs).check()


def test_static_types_need_calibration_and_qat_needs_fine_tuning(fp32) -> None:
    with pytest.raises(ConfigError, match="a calibration raster is required for static_int8"):
        q.quantize(fp32.model, None, QuantConfig("static_int8"))
    with pytest.raises(ConfigError, match="no calibration tiles"):
        q.quantize(fp32.model, [], QuantConfig("per_channel_int8"))
    with pytest.raises(ConfigError, match="qat_int8"):
        q.quantize(fp32.model, None, QuantConfig("qat_int8"))


# --------------------------------------------------------------------------- dynamic and FP16


def test_dynamic_int8_quantizes_only_the_head(quantized, eval_tiles, fp32_decisions) -> None:
    res = quantized("dynamic_int8")
    expected = {**dict.fromkeys(CONVS, "float32"), "head": "int8"}
    assert q.layer_kinds(res.module) == expected
    assert res.details["layers"] == expected
    assert agreement(res.module, eval_tiles, fp32_decisions) >= 0.95


def test_fp16_compute_choice_and_agreement(fp32, quantized, eval_tiles, fp32_decisions) -> None:
    res = quantized("fp16")
    compute = res.details["compute_dtype"]
    assert compute in ("fp16", "fp32")
    assert res.details["ms_fp16_compute"] > 0 and res.details["ms_fp32_compute"] > 0
    faster = "fp16" if res.details["ms_fp16_compute"] < res.details["ms_fp32_compute"] else "fp32"
    assert compute == faster
    assert agreement(res.module, eval_tiles, fp32_decisions) >= 0.99
    # Whichever compute precision won, both are usable: check the other one too.
    other = q.rebuild(fp32.model, QuantConfig("fp16"), {"compute_dtype": "fp16"})
    assert other.blocks[0].conv.weight.dtype == torch.float16
    assert agreement(other, eval_tiles, fp32_decisions) >= 0.99


def test_fp16_state_dict_dtypes(fp32, quantized) -> None:
    state = q.fp16_state_dict(quantized("fp16").module)
    assert set(state) == set(fp32.model.state_dict())
    for key, value in state.items():
        if key.startswith("normalize."):
            assert value.dtype == torch.float32, key
        elif fp32.model.state_dict()[key].is_floating_point():
            assert value.dtype == torch.float16, key
        else:  # e.g. BatchNorm's num_batches_tracked
            assert value.dtype == fp32.model.state_dict()[key].dtype, key
    assert any(k.startswith("normalize.") for k in state)


@pytest.mark.parametrize(
    "compute",
    [
        "fp16",
        "fp32",
    ],
)
def test_fp16_module_is_what_its_saved_weights_rebuild(fp32, eval_tiles, compute, tmp_path) -> None:
    cfg, details = QuantConfig("fp16"), {"compute_dtype": compute}
    module = q.rebuild(fp32.model, cfg, details)  # what quantize() returns for this compute
    torch.save(q.fp16_state_dict(module), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    again = q.load_state(q.rebuild(fp32.model, cfg, details), state)
    assert torch.equal(q.run(module, eval_tiles), q.run(again, eval_tiles))


# --------------------------------------------------------------------------- QAT freeze


def _snapshot(prepared: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import FakeQuantizeBase

    observers, bn, weights = {}, {}, {}
    for name, mod in prepared.named_modules():
        if isinstance(mod, FakeQuantizeBase):
            obs = mod.activation_post_process
            observers[f"{name}.min_val"] = obs.min_val.detach().clone()
            observers[f"{name}.max_val"] = obs.max_val.detach().clone()
        if isinstance(mod, (nniqat.ConvBn2d, nniqat.ConvBnReLU2d)):
            bn[f"{name}.bn.running_mean"] = mod.bn.running_mean.detach().clone()
            bn[f"{name}.bn.running_var"] = mod.bn.running_var.detach().clone()
    for name, p in prepared.named_parameters():
        weights[name] = p.detach().clone()
    return {"observers": observers, "bn": bn, "weights": weights}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def test_qat_freeze_fixes_observer_ranges_and_bn_statistics(
    fp32, qat_tiles, eval_tiles, fp32_decisions
) -> None:
    fill = np.asarray(fp32.meta.input.fill_values, np.float32)
    seen: dict[str, Any] = {}

    def fine_tune(prepared: torch.nn.Module, freeze) -> None:
        torch.manual_seed(0)  # dropout
        opt = torch.optim.AdamW(prepared.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        run_epoch(prepared, opt, qat_tiles, fill, 16, rng)  # observers get a range
        warm = _snapshot(prepared)
        run_epoch(prepared, opt, qat_tiles, fill, 16, rng)
        seen["before"] = (warm, _snapshot(prepared))
        freeze(prepared)
        frozen = _snapshot(prepared)
        run_epoch(prepared, opt, qat_tiles, fill, 16, rng)
        run_epoch(prepared, opt, qat_tiles, fill, 16, rng)
        seen["after"] = (frozen, _snapshot(prepared))
        seen["prepared"] = prepared

    res = q.quantize(fp32.model, None, QuantConfig("qat_int8"), fine_tune=fine_tune)

    warm, warmer = seen["before"]
    frozen, later = seen["after"]
    n_obs, n_bn = len(frozen["observers"]) // 2, len(frozen["bn"]) // 2
    # QuantStub + 3 conv outputs + head output, and a weight fake-quant per conv and the head.
    assert n_obs == 9, sorted(frozen["observers"])
    assert n_bn == 3, sorted(frozen["bn"])  # every conv-BN-ReLU block is fused for QAT
    # Before freezing, training moves every observer range and BN statistic.
    assert len(_changed(warm["bn"], warmer["bn"])) == 2 * n_bn
    moved = {k.rsplit(".", 1)[0] for k in _changed(warm["observers"], warmer["observers"])}
    assert len(moved) == n_obs, sorted(moved)
    # After freezing, they stay put while the weights keep training.
    assert _changed(frozen["observers"], later["observers"]) == []
    assert _changed(frozen["bn"], later["bn"]) == []
    assert len(_changed(frozen["weights"], later["weights"])) == len(frozen["weights"])
    prepared = seen["prepared"]
    enabled = [
        int(m.observer_enabled) for m in prepared.modules() if hasattr(m, "observer_enabled")
    ]
    assert enabled and not any(enabled)
    # The converted module is per-channel INT8 throughout and still a working classifier
    # (fine-tuning at lr 1e-3 moves it away from the FP32 decisions a little).
    assert set(q.qschemes(res.module)) == set(LAYERS)
    assert all(s.startswith("per_channel_") for s in q.qschemes(res.module).values())
    assert res.details["fine_tuned"] is True
    assert agreement(res.module, eval_tiles, fp32_decisions) >= 0.6


# --------------------------------------------------------------------------- save / rebuild / load

ROUND_TRIP = {
    "fp16": ("fp16", {}),
    "dynamic_int8": ("dynamic_int8", {}),
    "static_int8": ("static_int8", {}),
    "per_channel_int8": ("per_channel_int8", {}),
    "qat_int8": ("qat_int8", {}),
    "static_int8-fp32_layers": ("static_int8", {"fp32_layers": ("blocks.1", "head")}),
    "per_channel_int8-minmax-fp32_stem": (
        "per_channel_int8",
        {"observer": "minmax", "fp32_layers": ("blocks.0",)},
    ),
    # QAT fuses conv-BN for training; a block it keeps in FP32 must still reload.
    "qat_int8-fp32_stem": ("qat_int8", {"fp32_layers": ("blocks.0",)}),
}


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.parametrize(("quant_type", "kw"), list(ROUND_TRIP.values()), ids=list(ROUND_TRIP))
def test_rebuild_and_load_state_round_trip(
    request, fp32, quantized, eval_tiles, tmp_path, quant_type: str, kw: dict
) -> None:
    res = quantized(quant_type, **kw)
    state = q.fp16_state_dict(res.module) if quant_type == "fp16" else res.module.state_dict()
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    fresh = build_fp32_model(fp32.meta)  # untrained: every weight comes from the file
    module = q.load_state(q.rebuild(fresh, res.config, res.details), loaded)
    assert q.layer_kinds(module) == q.layer_kinds(res.module)
    assert q.qschemes(module) == q.qschemes(res.module)
    assert torch.equal(q.run(module, eval_tiles), q.run(res.module, eval_tiles))


# --------------------------------------------------------------------------- kernels at load

ONEDNN = "onednn" in torch.backends.quantized.supported_engines


def onednn_convolutions(capfd, module: torch.nn.Module, tiles: np.ndarray) -> int:
    """How many convolutions oneDNN executed while ``module`` ran (from its verbose log)."""
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        q.run(module, tiles[:2])
    log = capfd.readouterr().out.splitlines()
    return sum("exec" in line and "convolution" in line for line in log)


@pytest.mark.parametrize(
    ("capability", "faster"), [("AVX2", True), ("AVX512", True), ("DEFAULT", False)]
)
def test_kernel_engine_follows_the_cpu(monkeypatch, capability: str, faster: bool) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert q._onednn_is_faster() is faster
    for quant_type in q.STATIC_TYPES:
        for calibrated in ("fbgemm", "x86"):
            expected = "onednn" if faster and ONEDNN else calibrated
            assert q.kernel_engine(quant_type, calibrated) == expected
        assert q.kernel_engine(quant_type, "qnnpack") == "qnnpack"  # not a 7-bit calibration
    assert q.kernel_engine("dynamic_int8", "fbgemm") == "fbgemm"
    assert q.kernel_engine("per_channel_int8", "fbgemm", requested="fbgemm") == "fbgemm"


def test_environment_variable_forces_the_kernels(monkeypatch) -> None:
    monkeypatch.setattr(q, "_onednn_is_faster", lambda: True)
    monkeypatch.setenv(q.ENGINE_VARIABLE, "fbgemm")
    assert q.kernel_engine("per_channel_int8", "fbgemm") == "fbgemm"
    assert q.kernel_engine("per_channel_int8", "fbgemm", requested="qnnpack") == "qnnpack"
    monkeypatch.setenv(q.ENGINE_VARIABLE, "tensorrt")
    with pytest.raises(ConfigError, match=f"{q.ENGINE_VARIABLE}='tensorrt' is not available"):
        q.kernel_engine("static_int8", "fbgemm")


def test_requested_kernels_must_be_available() -> None:
    with pytest.raises(ConfigError) as info:
        q.kernel_engine("static_int8", "fbgemm", requested="tensorrt")
    message = str(info.value)
    assert "'tensorrt' is not available" in message
    assert "fbgemm" in message


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN quantized engine")
@pytest.mark.parametrize("quant_type", ["static_int8", "per_channel_int8", "qat_int8"])
def test_onednn_kernels_give_the_fbgemm_decisions(
    capfd, fp32, quantized, eval_tiles, quant_type
) -> None:
    res = quantized(quant_type)
    state = res.module.state_dict()
    decisions = {}
    for engine in ("fbgemm", "onednn"):
        module = q.load_state(
            q.rebuild(build_fp32_model(fp32.meta), res.config, res.details), state, engine
        )
        ran = onednn_convolutions(capfd, module, eval_tiles)
        assert (ran == 3) if engine == "onednn" else (ran == 0), (engine, ran)
        decisions[engine] = q.run(module, eval_tiles).argmax(1)
    share = (decisions["fbgemm"] == decisions["onednn"]).float().mean().item()
    assert share >= 0.99, f"oneDNN and fbgemm kernels agree on only {share:.1%} of tiles"


def test_bundle_loads_on_the_chosen_kernels(capfd, int8_bundle: Path, eval_tiles) -> None:
    default = Bundle(int8_bundle)
    quant = default.meta.quantization
    assert default.engine == q.kernel_engine(quant.type, quant.engine)
    fbgemm = Bundle(int8_bundle, engine="fbgemm")
    assert fbgemm.engine == "fbgemm"
    assert onednn_convolutions(capfd, fbgemm.model, eval_tiles) == 0
    if default.engine == "onednn":  # the three convolutions run on oneDNN's kernels
        assert onednn_convolutions(capfd, default.model, eval_tiles) == 3
    a, b = (q.run(x.model, eval_tiles).argmax(1) for x in (default, fbgemm))
    assert (a == b).float().mean().item() >= 0.99
    with pytest.raises(ConfigError, match="not available"):
        Bundle(int8_bundle, engine="tensorrt")


# --------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def other_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second scene, another seed and size, that the model did not train on."""
    return _cached(
        "quant_other_scene_768_seed5",
        lambda: make_scene(tmp_path_factory.mktemp("other") / "scene", 768, 768, 4, 5),
    )[0]


@pytest.mark.parametrize(("which", "count"), [("small", 16), ("other", 32)])
def test_diverse_calibration_covers_better_than_random(
    fp32, small_scene, other_scene, which: str, count: int
) -> None:
    path = small_scene[0] if which == "small" else other_scene
    diverse = choose_calibration_tiles([path], fp32.meta, count, method="diverse")
    rep = diverse.report
    assert rep["method"] == "diverse"
    assert rep["tiles"] == count == len(diverse.tiles)
    assert rep["usable_candidates"] > count
    assert rep["coverage_radius"] < rep["random_coverage_radius"], rep
    for seed in (0, 1, 2):
        rnd = choose_calibration_tiles([path], fp32.meta, count, method="random", seed=seed)
        assert rnd.report["tiles"] == count
        assert rnd.report["coverage_radius"] == pytest.approx(rnd.report["random_coverage_radius"])
        assert rep["coverage_radius"] < rnd.report["coverage_radius"], (seed, rep, rnd.report)
    print(
        f"{which}: {count} of {rep['usable_candidates']} tiles, coverage radius diverse "
        f"{rep['coverage_radius']:.2f} vs random {rep['random_coverage_radius']:.2f}"
    )


def test_calibration_data_reader_semantics(calib_tiles: np.ndarray) -> None:
    tiles = calib_tiles[:10]
    reader = CalibrationDataReader(tiles, batch_size=4, input_name="x")
    sizes = []
    while (item := reader.get_next()) is not None:
        assert list(item) == ["x"]
        batch = item["x"]
        assert batch.dtype == np.float32 and batch.flags.c_contiguous
        np.testing.assert_array_equal(batch, tiles[sum(sizes) : sum(sizes) + len(batch)])
        sizes.append(len(batch))
    assert sizes == [4, 4, 2]
    assert reader.get_next() is None  # stays exhausted
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["x"], tiles[:4])
    # Iterating rewinds first and yields the arrays themselves.
    assert [len(b) for b in reader] == [4, 4, 2]
    assert [len(b) for b in reader] == [4, 4, 2]
    assert reader.get_next() is None
    assert [len(b) for b in CalibrationDataReader(tiles, batch_size=32)] == [10]
    assert [len(b) for b in CalibrationDataReader(tiles[:8], batch_size=4)] == [4, 4]


@pytest.fixture(scope="module")
def cloudy(fp32, cloud_scene: Path) -> dict[str, Any]:
    """Grid tiles of the cloud scene, which are cloudy, and its calibration candidates."""
    with rasterio.open(cloud_scene) as ds:
        a = ds.read().astype(np.float64)
    n = CLOUD_SIZE // 64
    means = a.reshape(4, n, 64, n, 64).mean(axis=(0, 2, 4))  # mean over bands and pixels
    cands = scan_candidates([cloud_scene], fp32.meta)
    return {
        "means": means,
        "cloudy": means > CLOUDY_DN,
        "cands": cands,
        "cand_cloudy": means[cands.rows, cands.cols] > CLOUDY_DN,
    }


def test_cloud_scene_has_about_two_percent_cloudy_tiles(cloudy) -> None:
    share = cloudy["cloudy"].mean()
    print(f"cloudy tiles: {int(cloudy['cloudy'].sum())} of {cloudy['cloudy'].size} ({share:.2%})")
    assert 0.01 <= share <= 0.04
    assert len(cloudy["cands"].rows) == cloudy["cloudy"].size


def test_diverse_calibration_includes_cloudy_tiles(fp32, cloud_scene, cloudy) -> None:
    chosen = choose_calibration_tiles([cloud_scene], fp32.meta, 64)
    rep = chosen.report
    assert rep["tiles"] == 64
    n_cloudy = int((chosen.tiles.mean(axis=(1, 2, 3)) > CLOUDY_DN).sum())
    print(
        f"diverse set: {n_cloudy} of {int(cloudy['cloudy'].sum())} cloudy tiles; coverage "
        f"{rep['coverage_radius']:.2f} vs random {rep['random_coverage_radius']:.2f}"
    )
    assert n_cloudy >= 1
    assert rep["coverage_radius"] < rep["random_coverage_radius"]

    # A random sample of 64 often has none: exactly, the hypergeometric chance of missing all
    # m cloudy tiles among N; empirically, over 200 random draws of the candidates.
    cands, cand_cloudy = cloudy["cands"], cloudy["cand_cloudy"]
    n, m = len(cand_cloudy), int(cand_cloudy.sum())
    p_miss = math.comb(n - m, 64) / math.comb(n, 64)
    misses = sum(
        not cand_cloudy[np.random.default_rng(s).choice(n, 64, replace=False)].any()
        for s in range(200)
    )
    print(f"random 64 of {n} misses all {m} cloudy tiles: p = {p_miss:.2f}, seen {misses}/200")
    assert p_miss > 0.1
    assert misses >= 20

    # The report's coverage radius is what it says: recompute it from the chosen tiles.
    points = standardize(cands.descriptors)
    from georaster_quant.calibration import tile_descriptors

    valid = np.ones(chosen.tiles.shape[:1] + chosen.tiles.shape[2:], dtype=bool)
    d, _ = tile_descriptors(chosen.tiles, valid, fp32.meta)
    mu, sd = cands.descriptors.mean(axis=0), cands.descriptors.std(axis=0)
    chosen_points = (d - mu) / np.where(sd > 0, sd, 1.0)
    dist = np.sqrt(((points[:, None, :] - chosen_points[None, :, :]) ** 2).sum(-1)).min(axis=1)
    assert dist.max() == pytest.approx(rep["coverage_radius"], rel=1e-4, abs=1e-4)


def test_cloudy_tiles_count_as_bright(fp32, cloud_scene, cloudy) -> None:
    cands = cloudy["cands"]
    bright = cands.descriptors[:, cands.names.index("bright_share")]
    assert bright[cloudy["cand_cloudy"]].max() > 0.2
    rep = choose_calibration_tiles([cloud_scene], fp32.meta, 64).report
    assert rep["bright_tiles"] >= 1


def test_all_nodata_raster_is_a_training_data_error(fp32, small_scene, tmp_path) -> None:
    with rasterio.open(small_scene[0]) as src:
        profile = src.profile.copy()
    profile.update(count=4, dtype="uint16", nodata=0)
    path = tmp_path / "empty.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((4, profile["height"], profile["width"]), np.uint16))
    with pytest.raises(TrainingDataError, match="nodata") as info:
        choose_calibration_tiles([path], fp32.meta, 32)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- FP32 layers vs ranges


def _ruined(model: torch.nn.Module, k: float = 1000.0, channel: int = 0) -> torch.nn.Module:
    """The same function with channel ``channel`` of block 1 ``k`` times larger (block 2 undoes
    it; ReLU and max-pool are positively homogeneous): per-tensor INT8 cannot hold block 1's
    output any more."""
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        m.blocks[1].bn.weight[channel] *= k
        m.blocks[1].bn.bias[channel] *= k
        m.blocks[2].conv.weight[:, channel] /= k
    return m


@pytest.fixture(scope="module")
def ruined(fp32: Bundle) -> torch.nn.Module:
    return _ruined(fp32.model)


def test_ruined_model_same_function_but_per_tensor_int8_breaks(
    ruined, calib_tiles, eval_tiles, fp32_decisions
) -> None:
    assert (q.run(ruined, eval_tiles).argmax(1).numpy() == fp32_decisions).all()
    res = q.quantize(ruined, CalibrationDataReader(calib_tiles, 16), QuantConfig("static_int8"))
    share = agreement(res.module, eval_tiles, fp32_decisions)
    print(f"static_int8 of the ruined model agrees with FP32 on {share:.1%} of tiles")
    assert share < 0.6


def test_fp32_layers_also_keep_the_activations_between_them_fp32(
    ruined, calib_tiles, eval_tiles, fp32_decisions
) -> None:
    reader = CalibrationDataReader(calib_tiles, 16)
    both = q.quantize(
        ruined, reader, QuantConfig("static_int8", fp32_layers=("blocks.1", "blocks.2"))
    )
    assert agreement(both.module, eval_tiles, fp32_decisions) >= 0.95
    layers = ("blocks.0", "blocks.1", "blocks.2", "head")
    every = q.quantize(ruined, reader, QuantConfig("static_int8", fp32_layers=layers))
    assert agreement(every.module, eval_tiles, fp32_decisions) >= 0.99
