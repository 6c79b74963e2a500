"""Quantizing a GeoRasterCNN: the one module that uses ``torch.ao.quantization``.

PyTorch's eager workflow: eval, fuse conv-BN-ReLU, set a qconfig, prepare, calibrate on
representative tiles, convert (or prepare for QAT, fine-tune, freeze, convert). The band
normalization always stays FP32 ahead of the QuantStub, and any block or the head can stay
FP32 (``fp32_layers``) between a DeQuantStub and a QuantStub. ``rebuild`` recreates the
quantized structure of a saved bundle so its plain state dict can be loaded. torch 2.13 warns
that all of this is deprecated; :func:`quiet` keeps those warnings away from users.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from georaster_quant.bundle import ENGINES, OBSERVERS, STATIC_TYPES
from georaster_quant.bundle import QUANT_TYPES as BUNDLE_TYPES
from georaster_quant.errors import ConfigError, GeoRasterQuantWarning
from georaster_quant.model import GeoRasterCNN, NormalizeQuantize

QUANT_TYPES = tuple(t for t in BUNDLE_TYPES if t != "fp32")
#: Chosen by the measured observer table in docs/quantization.md.
DEFAULT_OBSERVER = "histogram"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hide torch's deprecation and internal warnings; ours still show."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("default", GeoRasterQuantWarning)
        yield


def supported_engines() -> list[str]:
    """Quantized engines this torch build and CPU offer, among the ones we support."""
    return [e for e in torch.backends.quantized.supported_engines if e in ENGINES]


def _onednn_is_faster() -> bool:
    """Whether this CPU is one where oneDNN's INT8 kernels beat fbgemm's at batch 32.

    Measured on AVX2-only (AMD EPYC) and AVX-512 VNNI CPUs (with and without AMX); torch's
    capability names both x86 levels (AVX-512 without VNNI is taken as AVX2's case, unmeasured).
    """
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


#: Environment variable that forces the INT8 kernels (e.g. ``fbgemm``) for every loaded model.
ENGINE_VARIABLE = "GEORASTER_QUANT_INT8_ENGINE"


def kernel_engine(
    quant_type: str, calibrated: str | None, requested: str | None = None
) -> str | None:
    """The engine whose kernels a saved model runs on here; its weights are packed for it.

    None for FP32 and FP16 models, which have no quantized kernels. ``calibrated`` is the
    engine the bundle records (fbgemm if none). ``requested``, else the
    ``GEORASTER_QUANT_INT8_ENGINE`` environment variable (which reaches the CLI and local dask
    workers too), overrides the choice: an engine torch offers here, or a ConfigError.

    On x86 CPUs with AVX2 or AVX-512, oneDNN ran the static INT8 models at batch 32 1.4x
    (AVX2 only) to 1.5-2.9x (AVX-512 VNNI) faster than fbgemm, the engine they are calibrated
    for (docs/quantization.md). An fbgemm or x86 calibration (activations in 7 bits) computes
    the same on oneDNN up to rounding, so those models run there; elsewhere, and for dynamic
    INT8 (only its head is quantized), the calibration engine stays.
    """
    if quant_type in ("fp32", "fp16"):
        return None
    calibrated = calibrated or "fbgemm"
    have = torch.backends.quantized.supported_engines
    source = "engine "
    if requested is None and os.environ.get(ENGINE_VARIABLE):
        requested, source = os.environ[ENGINE_VARIABLE], f"{ENGINE_VARIABLE}="
    if requested is not None:
        if requested not in have:
            raise ConfigError(
                f"{source}{requested!r} is not available in this torch build on this CPU "
                f"(available: {', '.join(e for e in have if e != 'none')})"
            )
        return requested
    if (
        quant_type in STATIC_TYPES
        and calibrated in ("fbgemm", "x86")
        and "onednn" in have
        and _onednn_is_faster()
    ):
        return "onednn"
    return calibrated


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize: type, engine, activation observer and layers kept in FP32."""

    quant_type: str
    engine: str = "fbgemm"
    observer: str = DEFAULT_OBSERVER
    per_channel: bool | None = None
    fp32_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.per_channel is None:
            per_channel = self.quant_type in ("per_channel_int8", "qat_int8")
            object.__setattr__(self, "per_channel", per_channel)

    def check(self, model: GeoRasterCNN | None = None) -> None:
        """Reject incompatible settings before any work starts."""
        if self.quant_type not in QUANT_TYPES:
            raise ConfigError(
                f"unknown quant type {self.quant_type!r}; choose one of {', '.join(QUANT_TYPES)}"
            )
        if self.observer not in OBSERVERS:
            raise ConfigError(
                f"unknown observer {self.observer!r}; choose one of {', '.join(OBSERVERS)}"
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        have = supported_engines()
        if self.quant_type != "fp16" and self.engine not in have:
            raise ConfigError(
                f"engine {self.engine!r} is not available in this torch build on this CPU "
                f"(available: {', '.join(have) or 'none'})"
            )
        if model is not None:
            unknown = set(self.fp32_layers) - set(model.quantizable_layers())
            if unknown:
                raise ConfigError(
                    f"unknown layer(s) {sorted(unknown)}; the model has "
                    f"{', '.join(model.quantizable_layers())}"
                )


class Cast(nn.Module):
    """Cast floating tensors to a dtype (the quant/dequant slots of an FP16 model)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cast ``x``."""
        return x.to(self.dtype)


def _qconfig(per_channel: bool, observer: str, engine: str) -> Any:
    from torch.ao.quantization import observer as obs
    from torch.ao.quantization.qconfig import QConfig

    reduce_range = engine in ("fbgemm", "x86")
    act_obs = {
        "minmax": obs.MinMaxObserver,
        "moving_average": obs.MovingAverageMinMaxObserver,
        "histogram": obs.HistogramObserver,
    }[observer].with_args(reduce_range=reduce_range)
    if per_channel:
        weight = obs.PerChannelMinMaxObserver.with_args(
            dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        )
    else:
        weight = obs.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    return QConfig(activation=act_obs, weight=weight)


def _qat_qconfig(per_channel: bool, engine: str) -> Any:
    from torch.ao.quantization import get_default_qat_qconfig

    qc = get_default_qat_qconfig(engine)
    if per_channel:
        return qc
    from torch.ao.quantization import fake_quantize as fq
    from torch.ao.quantization import observer as obs
    from torch.ao.quantization.qconfig import QConfig

    weight = fq.FakeQuantize.with_args(
        observer=obs.MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
    )
    return QConfig(activation=qc.activation, weight=weight)


def _keep_fp32(model: nn.Module, layers: Iterable[str]) -> None:
    """Keep the named blocks/head in FP32, with stubs only where float and INT8 meet.

    Consecutive FP32 layers pass float tensors to each other, so keeping a layer in FP32 also
    removes the quantization of its input and output activations.
    """
    from torch.ao.quantization import DeQuantStub, QuantStub

    fp32 = set(layers)
    units = [f"blocks.{i}" for i in range(len(model.blocks))] + ["head"]
    prev_float = True  # the model's input (after the FP32 normalization) is float
    for name in units:
        mod = model.get_submodule(name)
        is_float = name in fp32
        if is_float:
            mod.qconfig = None
            if not prev_float:
                mod = nn.Sequential(DeQuantStub(), mod)
        elif prev_float and name != units[0]:
            mod = nn.Sequential(QuantStub(), mod)
        if name == "head":
            model.head = mod
        else:
            model.blocks[int(name.split(".")[1])] = mod
        prev_float = is_float
    if units[0] in fp32:
        model.quant = nn.Identity()
    if "head" in fp32:
        model.dequant = nn.Identity()


def _prepare(model: GeoRasterCNN, cfg: QuantConfig, *, qat: bool = False) -> nn.Module:
    """A fused, observed copy of ``model`` ready to calibrate (or to fine-tune for QAT)."""
    import torch.ao.quantization as tq

    torch.backends.quantized.engine = cfg.engine
    m = copy.deepcopy(model)
    m.quant = tq.QuantStub()
    m.dequant = tq.DeQuantStub()
    if qat:
        m.train()
        tq.fuse_modules_qat(m, m.fusable_groups(), inplace=True)
        m.qconfig = _qat_qconfig(bool(cfg.per_channel), cfg.engine)
    else:
        m.eval()
        tq.fuse_modules(m, m.fusable_groups(), inplace=True)
        m.qconfig = _qconfig(bool(cfg.per_channel), cfg.observer, cfg.engine)
    _keep_fp32(m, cfg.fp32_layers)
    m.normalize.qconfig = None
    if qat:
        tq.prepare_qat(m, inplace=True)
    else:
        tq.prepare(m, inplace=True)
    return m


def _convert(prepared: nn.Module) -> nn.Module:
    import torch.ao.quantization as tq

    prepared.eval()
    return _fold_float_bn(tq.convert(prepared, inplace=False))


def _fold_float_bn(module: nn.Module) -> nn.Module:
    """Fold the BatchNorm of blocks QAT kept in FP32 into their conv.

    QAT fuses conv-BN-ReLU for training, and a block left in FP32 keeps its BN; eval-mode
    fusion (what static quantization and :func:`rebuild` do) folds it. Folding here gives both
    the same structure and state dict, and the same outputs in eval mode.
    """
    import torch.ao.nn.intrinsic as nni
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nni.ConvBnReLU2d:
                conv, bn, relu = child
                fused = fuse_conv_bn_eval(conv.eval(), bn.eval())
                setattr(parent, name, nni.ConvReLU2d(fused, relu))
    return module


def _to_fp16(model: GeoRasterCNN, compute: str) -> nn.Module:
    """FP16 weights; computes in FP16 after the FP32 normalization, or in FP32 (upcast)."""
    m = copy.deepcopy(model).eval()
    for name, child in m.named_children():
        if name == "normalize":
            continue
        child.half()
        if compute == "fp32":  # the same rounded weights, computed in FP32
            child.float()
    if compute == "fp16":
        m.quant = Cast(torch.float16)
        m.dequant = Cast(torch.float32)
    return m


def fp16_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights in half precision, except the normalization (always FP32)."""
    state = model.state_dict()
    for k, v in state.items():
        if v.is_floating_point() and not k.startswith("normalize."):
            state[k] = v.half()
    return state


def _forward_batches(model: nn.Module, batches: Iterable[np.ndarray]) -> int:
    seen = 0
    with torch.inference_mode():
        for batch in batches:
            model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            seen += len(batch)
    return seen


def observer_ranges(prepared: nn.Module) -> dict[str, list[float]]:
    """Activation ranges ``[min, max]`` seen by each observer of a calibrated model."""
    out = {}
    for name, mod in prepared.named_modules():
        if name.endswith("activation_post_process") and hasattr(mod, "min_val"):
            lo, hi = mod.min_val, mod.max_val
            if lo.numel() == 1 and torch.isfinite(lo) and torch.isfinite(hi):
                out[name.removesuffix(".activation_post_process")] = [float(lo), float(hi)]
    return out


@dataclass
class QuantResult:
    """A quantized module and what quantizing it learned."""

    module: nn.Module
    config: QuantConfig
    details: dict[str, Any] = field(default_factory=dict)


def quantize(
    model: GeoRasterCNN,
    calibration: Iterable[np.ndarray] | None,
    config: QuantConfig,
    *,
    fine_tune: Callable[[nn.Module, Callable[[nn.Module], None]], None] | None = None,
) -> QuantResult:
    """A new quantized module; ``model`` is left untouched.

    ``calibration`` yields raw batches (static types; also used to time FP16). ``fine_tune``
    (QAT only) trains the prepared module, calling the given ``freeze`` hook once warm-up is
    over.
    """
    config.check(model)
    qt = config.quant_type
    with quiet():
        if qt == "fp16":
            batch = next(iter(calibration), None) if calibration is not None else None
            compute, timing = _faster_fp16_compute(model, batch)
            return QuantResult(
                _to_fp16(model, compute), config, {"compute_dtype": compute, **timing}
            )
        if qt == "dynamic_int8":
            import torch.ao.quantization as tq

            torch.backends.quantized.engine = config.engine
            m = tq.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
            return QuantResult(m, config, {"layers": layer_kinds(m)})
        if qt == "qat_int8":
            if fine_tune is None:
                raise ConfigError("qat_int8 needs labelled training tiles to fine-tune on")
            prepared = _prepare(model, config, qat=True)
            fine_tune(prepared, freeze)
            details: dict[str, Any] = {"fine_tuned": True}
        else:
            if calibration is None:
                raise ConfigError(f"a calibration raster is required for {qt}")
            prepared = _prepare(model, config)
            if _forward_batches(prepared, calibration) == 0:
                raise ConfigError("no calibration tiles were given")
            details = {}
        details["activation_ranges"] = observer_ranges(prepared)
        m = _convert(prepared)
        details["layers"] = layer_kinds(m)
    return QuantResult(m, config, details)


def freeze(prepared: nn.Module) -> None:
    """End QAT warm-up: freeze observers (fixed ranges) and BatchNorm statistics."""
    import torch.ao.nn.intrinsic.qat as nniqat
    import torch.ao.quantization as tq

    with quiet():
        prepared.apply(tq.disable_observer)
        prepared.apply(nniqat.freeze_bn_stats)


def _faster_fp16_compute(
    model: GeoRasterCNN, batch: np.ndarray | None, repeats: int = 5
) -> tuple[str, dict[str, float]]:
    """Time FP16 and FP32 compute alternately on one batch; the faster one wins."""
    if batch is None:
        batch = np.zeros((8, model.in_channels, model.tile_size, model.tile_size), np.float32)
    x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    candidates = {c: _to_fp16(model, c) for c in ("fp16", "fp32")}
    times: dict[str, list[float]] = {c: [] for c in candidates}
    with torch.inference_mode():
        for m in candidates.values():
            m(x)
        for _ in range(repeats):
            for c, m in candidates.items():
                t0 = time.perf_counter()
                m(x)
                times[c].append(time.perf_counter() - t0)
    med = {c: float(np.median(t)) * 1000 for c, t in times.items()}
    best = min(med, key=med.__getitem__)
    return best, {"ms_fp16_compute": med["fp16"], "ms_fp32_compute": med["fp32"]}


def layer_kinds(module: nn.Module) -> dict[str, str]:
    """Each conv/linear layer of a (possibly quantized) model and the dtype of its weights."""

    def is_layer(m: nn.Module) -> bool:
        name = type(m).__name__
        return ("Conv" in name or "Linear" in name) and "Packed" not in name

    out = {}
    for name, mod in module.named_modules():
        if is_layer(mod) and not any(is_layer(c) for c in mod.children()):
            out[name] = "int8" if ".quantized" in type(mod).__module__ else _weight_dtype(mod)
    return out


def _weight_dtype(mod: nn.Module) -> str:
    w = getattr(mod, "weight", None)
    return str(w.dtype).removeprefix("torch.") if isinstance(w, torch.Tensor) else "float32"


def qschemes(module: nn.Module) -> dict[str, str]:
    """The weight qscheme of every quantized conv/linear layer (for checks and reports)."""
    out = {}
    for name, mod in module.named_modules():
        weight = getattr(mod, "weight", None)
        if callable(weight) and "quantized" in type(mod).__module__:
            w = weight()
            out[name] = str(w.qscheme()).removeprefix("torch.")
    return out


def rebuild(model: GeoRasterCNN, config: QuantConfig, details: dict[str, Any]) -> nn.Module:
    """The quantized module structure of a saved bundle, ready for ``load_state_dict``."""
    qt = config.quant_type
    with quiet():
        if qt == "fp16":
            return _to_fp16(model, details.get("compute_dtype", "fp32"))
        if qt == "dynamic_int8":
            import torch.ao.quantization as tq

            torch.backends.quantized.engine = config.engine
            return tq.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
        # Static and QAT models convert to the same quantized modules; a zero batch gives the
        # observers a range so convert() works, and load_state_dict then sets the real ones.
        prepared = _prepare(
            model, QuantConfig(qt, config.engine, "minmax", config.per_channel, config.fp32_layers)
        )
        zeros = np.zeros((1, model.in_channels, model.tile_size, model.tile_size), np.float32)
        _forward_batches(prepared, [zeros])
        return _convert(prepared)


def load_state(module: nn.Module, state: dict[str, Any], engine: str | None = None) -> nn.Module:
    """Load a state dict into a rebuilt module (quietly: quantized tensors warn).

    Quantized weights are packed for ``engine``'s kernels (default: the current engine).
    """
    if engine is not None:
        torch.backends.quantized.engine = engine
    with quiet():
        module.load_state_dict(state, strict=True)
    return module.eval()


def inference_form(module: nn.Module) -> nn.Module:
    """``module`` as inference runs it: a static INT8 model's first quantization is fused.

    Its normalization and per-tensor input quantization become one
    :class:`~georaster_quant.model.NormalizeQuantize` (same values, fewer passes, and a
    channels-last result the first convolution needs; tiles of the model's tile size). Other
    models are returned as they are. The result shares every other layer with ``module``;
    only the bundle's own structure is saved or exported to ONNX.
    """
    from torch.ao.nn.quantized import Quantize

    quant = getattr(module, "quant", None)
    if not isinstance(quant, Quantize) or quant.dtype != torch.quint8:
        return module
    fused = copy.copy(module)
    fused._modules = dict(module._modules)  # noqa: SLF001 - a shallow copy of the children
    fused.normalize = NormalizeQuantize(
        module.normalize, float(quant.scale), int(quant.zero_point), module.tile_size
    ).train(module.training)
    fused.quant = nn.Identity()
    return fused


def run(module: nn.Module, batch: np.ndarray) -> torch.Tensor:
    """Logits of a (possibly quantized) module for a raw float32 batch."""
    with quiet(), torch.inference_mode():
        return module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float()
