"""From an FP32 bundle to a quantized bundle: calibrate, quantize, hold an accuracy budget, save.

Accuracy is measured on held-out labelled tiles: the validation blocks recorded at training
when the training rasters are still where they were (and unchanged), or tiles of
``--data``/``--labels``. When a budget (``max_accuracy_drop``, percentage points) is exceeded,
static quantization tries per-channel weights, then the histogram observer, then keeps the
most sensitive layers in FP32 (ranked by the drop when only that layer is quantized) until the
budget holds. The saved bundle is loaded back and checked before it is reported.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from georaster_quant.bundle import (
    META_FILE,
    Bundle,
    BundleMeta,
    Quantization,
    read_meta,
    save_bundle,
    sha256_file,
    with_bundle_files,
)
from georaster_quant.calibration import CalibrationDataReader, choose_calibration_tiles
from georaster_quant.errors import (
    AccuracyBudgetError,
    BundleError,
    CalibrationWarning,
    ConfigError,
    TrainingDataError,
)
from georaster_quant.export import NO_ONNX_TYPES, export_into
from georaster_quant.io import RasterReader, check_output_path, ensure_folder
from georaster_quant.quantize import (
    DEFAULT_OBSERVER,
    STATIC_TYPES,
    QuantConfig,
    QuantResult,
    fp16_state_dict,
    quantize,
    run,
)
from georaster_quant.sampling import TileSet, sample_tiles, spatial_split, split_by_blocks

#: Calibration sets smaller than this are flagged as narrow.
NARROW_CALIBRATION = 32
#: Static quantization refuses calibration sets smaller than this.
MIN_CALIBRATION = 8
#: Held-out tiles used to measure accuracy (a random subset beyond this).
MAX_HELD_OUT = 4000


@dataclass
class QuantizeOptions:
    """The ``quantize`` command's settings."""

    quant_type: str
    data: list[str] = field(default_factory=list)
    labels: str | None = None
    num_calib_batches: int = 4
    batch_size: int = 32
    engine: str = "fbgemm"
    observer: str = DEFAULT_OBSERVER
    calibration: str = "diverse"
    max_accuracy_drop: float | None = None
    qat_epochs: int = 3
    bands: list[int] | None = None
    seed: int = 0


@dataclass
class LabelledSplit:
    """Labelled tiles for fine-tuning (QAT) and for measuring accuracy, and where from."""

    train: TileSet | None
    held_out: TileSet
    source: str


@dataclass
class Measured:
    """Accuracy of one candidate on the held-out tiles."""

    accuracy: float
    agreement: float
    predictions: np.ndarray


def _labelled_split(meta: BundleMeta, opts: QuantizeOptions) -> LabelledSplit | None:
    """Held-out (and training) tiles with labels, or None if no labels can be found."""
    training = meta.training
    if opts.labels and opts.data:
        image, labels = opts.data[0], opts.labels
    elif training.get("image_path") and training.get("labels_path"):
        image, labels = training["image_path"], training["labels_path"]
        if not (Path(image).is_file() and Path(labels).is_file()):
            return None
    else:
        return None
    cfg = training.get("config", {})
    tile = meta.input.tile_size
    with RasterReader(image) as img, RasterReader(labels) as lab:
        tiles = sample_tiles(
            img,
            lab,
            tile_size=tile,
            stride=int(cfg.get("sample_stride", max(tile // 2, 1))),
            label_footprint=meta.input.label_footprint,
            num_classes=len(meta.classes),
            max_tiles=3 * MAX_HELD_OUT,
            seed=opts.seed,
        )
        height, width = img.info.height, img.info.width
    block = int(cfg.get("split_block", 256))
    same = sha256_file(image) == meta.provenance.training_raster_sha256
    if same and training.get("val_blocks"):
        train_idx, val_idx = split_by_blocks(
            tiles,
            height=height,
            width=width,
            tile_size=tile,
            block=block,
            val_blocks=training["val_blocks"],
        )
        source = f"validation blocks of the training raster {os.path.basename(image)}"
    else:
        train_idx, val_idx, _ = spatial_split(
            tiles,
            height=height,
            width=width,
            tile_size=tile,
            block=block,
            val_fraction=0.3,
            seed=opts.seed,
        )
        source = f"held-out blocks of {os.path.basename(image)} with {os.path.basename(labels)}"
    if len(val_idx) == 0:
        raise TrainingDataError(f"{labels}: no held-out labelled tiles to measure accuracy on")
    rng = np.random.default_rng(opts.seed)
    if len(val_idx) > MAX_HELD_OUT:
        val_idx = np.sort(rng.choice(val_idx, MAX_HELD_OUT, replace=False))
    return LabelledSplit(tiles.subset(train_idx), tiles.subset(val_idx), source)


def _measure(
    module: Any, x: np.ndarray, labels: np.ndarray | None, ref: np.ndarray | None, batch: int = 256
) -> Measured:
    preds = np.concatenate(
        [run(module, x[i : i + batch]).argmax(1).numpy() for i in range(0, len(x), batch)]
    )
    acc = float((preds == labels).mean()) if labels is not None else float("nan")
    agree = float((preds == ref).mean()) if ref is not None else 1.0
    return Measured(acc, agree, preds)


def _latency_ms(modules: dict[str, Any], batch: np.ndarray, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds per batch of each module, timed alternately."""
    times: dict[str, list[float]] = {k: [] for k in modules}
    for m in modules.values():
        run(m, batch)
    for _ in range(repeats):
        for k, m in modules.items():
            t0 = time.perf_counter()
            run(m, batch)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) * 1000 for k, v in times.items()}


def _fine_tuner(split: LabelledSplit | None, fill: np.ndarray, opts: QuantizeOptions):  # type: ignore[no-untyped-def]
    """QAT fine-tuning on the training tiles: warm-up epoch, then frozen observers and BN."""
    if split is None or split.train is None or len(split.train) < opts.batch_size:
        return None

    def fine_tune(prepared: Any, freeze_hook: Any) -> None:
        import torch

        from georaster_quant.training import run_epoch

        torch.manual_seed(opts.seed)
        opt = torch.optim.AdamW(prepared.parameters(), lr=1e-4, weight_decay=1e-5)
        rng = np.random.default_rng(opts.seed)
        for epoch in range(opts.qat_epochs):
            if epoch == 1:
                freeze_hook(prepared)
            run_epoch(prepared, opt, split.train, fill, opts.batch_size, rng)
        if opts.qat_epochs <= 1:
            freeze_hook(prepared)

    return fine_tune


@dataclass
class Attempt:
    """One quantization tried while holding the budget."""

    result: QuantResult
    measured: Measured

    def drop(self, fp32_acc: float) -> float:
        """Accuracy drop in percentage points."""
        return (fp32_acc - self.measured.accuracy) * 100


def quantize_bundle(
    weights: str | os.PathLike[str],
    opts: QuantizeOptions,
    output: str | os.PathLike[str] = "quantized_models",
    *,
    overwrite: bool = False,
    onnx: bool = False,
) -> dict[str, Any]:
    """Quantize the FP32 bundle ``weights`` into ``output/{model_name}_{quant_type}``.

    With ``onnx`` the new bundle holds its ``model.onnx`` export from the moment it appears
    (types with an ONNX form only: not ``dynamic_int8``).
    """
    meta = read_meta(weights)
    if meta.quant_type != "fp32":
        raise BundleError(
            f"{weights}: is a {meta.quant_type} bundle; quantize from the FP32 bundle it came from"
        )
    cfg = QuantConfig(opts.quant_type, opts.engine, opts.observer)
    cfg.check()
    static = opts.quant_type in ("static_int8", "per_channel_int8")
    if static and not opts.data:
        raise ConfigError(f"a calibration raster is required for {opts.quant_type} (--data)")
    if opts.max_accuracy_drop is not None and not opts.max_accuracy_drop >= 0:  # NaN too
        raise ConfigError(
            f"--max-accuracy-drop must be >= 0 percentage points, got {opts.max_accuracy_drop}"
        )
    if opts.labels and not opts.data:
        raise ConfigError("--labels goes with --data (the raster the labels belong to)")
    out_root = ensure_folder(output, create=False)  # made only when the bundle is written
    target = out_root / f"{meta.model_name}_{opts.quant_type}"
    if out_root.is_dir():
        inputs = with_bundle_files([weights, *opts.data, *([opts.labels] if opts.labels else [])])
        check_output_path(target, overwrite=overwrite, folder=True, marker=META_FILE, inputs=inputs)

    fp32 = Bundle(weights)
    fill = np.asarray(meta.input.fill_values, dtype=np.float32)
    split = _labelled_split(meta, opts)
    if opts.max_accuracy_drop is not None and split is None:
        raise TrainingDataError(
            f"{weights}: --max-accuracy-drop needs labelled tiles; pass --data and --labels "
            "(the training rasters recorded in the bundle are not available)"
        )
    calib = None
    if opts.data:
        count = opts.num_calib_batches * opts.batch_size
        calib = choose_calibration_tiles(
            opts.data, meta, count, bands=opts.bands, method=opts.calibration, seed=opts.seed
        )
        if static and calib.report["tiles"] < MIN_CALIBRATION:
            raise TrainingDataError(
                f"{opts.data[0]}: calibration set too small: {calib.report['tiles']} tile(s), at "
                f"least {MIN_CALIBRATION} are needed and {NARROW_CALIBRATION}-128 recommended "
                "(a larger raster, or more --num-calib-batches x --batch-size)"
            )
        _warn_calibration(calib.report, opts.data[0])
    if opts.quant_type == "qat_int8" and split is None:
        raise TrainingDataError(
            f"{weights}: qat_int8 fine-tunes on labelled tiles; pass --data and --labels"
        )
    reader = CalibrationDataReader(calib.tiles, opts.batch_size) if calib is not None else None
    eval_x = split.held_out.filled(fill) if split else (calib.tiles if calib else None)
    eval_y = split.held_out.labels if split else None
    if eval_x is None:
        raise ConfigError(f"{weights}: pass --data to measure {opts.quant_type} on real tiles")
    ref = _measure(fp32.model, eval_x, eval_y, None)
    fine_tune = _fine_tuner(split, fill, opts)

    def attempt(c: QuantConfig) -> Attempt:
        res = quantize(fp32.model, reader, c, fine_tune=fine_tune)
        return Attempt(res, _measure(res.module, eval_x, eval_y, ref.predictions))

    steps: list[dict[str, Any]] = []
    best = attempt(cfg)
    steps.append(_step("requested", best, ref.accuracy))
    budget = opts.max_accuracy_drop
    sensitivity: list[dict[str, Any]] = []
    if budget is not None and best.drop(ref.accuracy) > budget:
        if opts.quant_type not in STATIC_TYPES:
            raise AccuracyBudgetError(
                f"{weights}: {opts.quant_type} loses {best.drop(ref.accuracy):.2f} points, over "
                f"the budget of {budget:g}; {opts.quant_type} has no per-layer fallback"
            )
        best, sensitivity = _hold_budget(best, ref.accuracy, budget, fp32.model, attempt, steps)
    elif opts.quant_type in ("static_int8", "per_channel_int8"):  # for the report
        sensitivity = _sensitivity(best.result.config, fp32.model, attempt, ref.accuracy)
    written: dict[str, Any] = {}

    def verify(folder: Path) -> None:
        """Load what was written and measure it again before it is moved into place."""
        bundle = Bundle(folder)
        again = _measure(bundle.model, eval_x, eval_y, ref.predictions)
        if budget is not None and (ref.accuracy - again.accuracy) * 100 > budget + 1e-9:
            raise AccuracyBudgetError(
                f"{target}: the written bundle loses "
                f"{(ref.accuracy - again.accuracy) * 100:.2f} points, over the budget of {budget:g}"
            )
        written.update(bundle=bundle, measured=again, size=bundle.size_bytes)
        if onnx and opts.quant_type not in NO_ONNX_TYPES:
            written["onnx"] = export_into(folder, target)

    out_root.mkdir(exist_ok=True)
    details = _save(
        target, fp32, best, meta, ref, calib, split, steps, sensitivity, opts, overwrite, verify
    )
    again = written["measured"]
    batch = np.resize(eval_x, (opts.batch_size, *eval_x.shape[1:]))  # a full batch
    lat = _latency_ms({"fp32": fp32.model, "quant": written["bundle"].model}, batch)
    summary = {
        "source": os.fspath(weights),
        "bundle": os.fspath(target),
        "quant_type": opts.quant_type,
        "size_fp32": fp32.size_bytes,
        "size_quant": written["size"],
        "compression": fp32.size_bytes / max(written["size"], 1),
        "latency_ms_fp32": lat["fp32"],
        "latency_ms_quant": lat["quant"],
        "batch_size": len(batch),
        "kernels": written["bundle"].engine,
        "accuracy_fp32": ref.accuracy,
        "accuracy_quant": again.accuracy,
        "agreement": again.agreement,
        "measured_on": split.source if split else "calibration tiles (agreement only)",
        "held_out_tiles": int(len(eval_x)),
        "fp32_layers": list(best.result.config.fp32_layers),
        "details": details,
        "calibration": calib.report if calib else None,
        "onnx": written.get("onnx"),
    }
    return summary


def _step(what: str, a: Attempt, fp32_acc: float) -> dict[str, Any]:
    c = a.result.config
    return {
        "step": what,
        "per_channel": c.per_channel,
        "observer": c.observer,
        "fp32_layers": list(c.fp32_layers),
        "accuracy": a.measured.accuracy,
        "drop_pp": a.drop(fp32_acc),
        "agreement": a.measured.agreement,
    }


def _hold_budget(
    best: Attempt, fp32_acc: float, budget: float, model: Any, attempt: Any, steps: list[dict]
) -> tuple[Attempt, list[dict[str, Any]]]:
    """Escalate until the drop is within ``budget``: per-channel, histogram, FP32 layers."""
    cfg = best.result.config

    def better(a: Attempt) -> Attempt:
        return a if a.drop(fp32_acc) < best.drop(fp32_acc) else best

    if not cfg.per_channel:
        a = attempt(dataclasses.replace(cfg, per_channel=True))
        steps.append(_step("per-channel weights", a, fp32_acc))
        best = better(a)
        if best.drop(fp32_acc) <= budget:
            return best, []
    if best.result.config.observer != "histogram":
        a = attempt(dataclasses.replace(best.result.config, observer="histogram"))
        steps.append(_step("histogram observer", a, fp32_acc))
        best = better(a)
        if best.drop(fp32_acc) <= budget:
            return best, []
    base = best.result.config
    sensitivity = _sensitivity(base, model, attempt, fp32_acc)
    kept: list[str] = []
    for s in sensitivity:
        kept.append(s["layer"])
        a = attempt(dataclasses.replace(base, fp32_layers=tuple(kept)))
        steps.append(_step(f"keep {', '.join(kept)} in FP32", a, fp32_acc))
        if a.drop(fp32_acc) <= budget:
            return a, sensitivity
    return a, sensitivity


def _sensitivity(base: QuantConfig, model: Any, attempt: Any, fp32_acc: float) -> list[dict]:
    """Layers ranked by the drop (then disagreement) when only that layer is quantized."""
    layers = model.quantizable_layers()
    ranking = []
    for layer in layers:
        a = attempt(dataclasses.replace(base, fp32_layers=tuple(x for x in layers if x != layer)))
        ranking.append(
            {"layer": layer, "drop_pp": a.drop(fp32_acc), "disagreement": 1 - a.measured.agreement}
        )
    ranking.sort(key=lambda r: (r["drop_pp"], r["disagreement"]), reverse=True)
    return ranking


def _warn_calibration(report: dict[str, Any], path: str) -> None:
    if report["tiles"] < report["requested"]:
        warnings.warn(
            f"{path}: {report['requested']} calibration tiles were asked for, only "
            f"{report['tiles']} usable tiles exist",
            CalibrationWarning,
            stacklevel=3,
        )
    if report["tiles"] < NARROW_CALIBRATION:
        warnings.warn(
            f"{path}: only {report['tiles']} calibration tiles; ranges may not cover the scene "
            f"(use at least {NARROW_CALIBRATION})",
            CalibrationWarning,
            stacklevel=3,
        )
    if report["nodata_heavy_tiles"]:
        warnings.warn(
            f"{path}: {report['nodata_heavy_tiles']} calibration tile(s) are more than 25% nodata",
            CalibrationWarning,
            stacklevel=3,
        )


def _save(
    target: Path,
    fp32: Bundle,
    best: Attempt,
    meta: BundleMeta,
    ref: Measured,
    calib: Any,
    split: LabelledSplit | None,
    steps: list[dict[str, Any]],
    sensitivity: list[dict[str, Any]],
    opts: QuantizeOptions,
    overwrite: bool,
    verify: Any,
) -> dict[str, Any]:
    res = best.result
    c = res.config
    ranges = res.details.get("activation_ranges", {})
    dead = [k for k, (lo, hi) in ranges.items() if lo == hi == 0]
    if dead:
        warnings.warn(
            f"observer(s) saw only zeros: {', '.join(dead)}; the calibration tiles never "
            "activate them",
            CalibrationWarning,
            stacklevel=3,
        )
    details = {k: v for k, v in res.details.items()}
    details["budget_steps"] = steps
    if sensitivity:
        details["sensitivity"] = sensitivity
    calibration = dict(calib.report) if calib is not None else None
    if calibration is not None:
        calibration["batch_size"] = opts.batch_size
        calibration["num_batches"] = opts.num_calib_batches
    quant = Quantization(
        type=c.quant_type,
        engine=None if c.quant_type == "fp16" else c.engine,
        observer=c.observer if c.quant_type in ("static_int8", "per_channel_int8") else None,
        per_channel=c.per_channel if c.quant_type in STATIC_TYPES else None,
        fp32_layers=list(c.fp32_layers),
        calibration=calibration,
        details=details,
    )
    metrics = dict(meta.metrics)
    metrics[c.quant_type] = {
        "heldout_accuracy": best.measured.accuracy,
        "heldout_agreement": best.measured.agreement,
        "fp32_heldout_accuracy": ref.accuracy,
        "heldout_source": split.source if split else None,
        "max_accuracy_drop": opts.max_accuracy_drop,
    }
    new_meta = meta.model_copy(
        update={
            "quantization": quant,
            "metrics": metrics,
            "provenance": meta.provenance.model_copy(
                update={"source_bundle": os.fspath(fp32.path)}
            ),
        }
    )
    state = fp16_state_dict(res.module) if c.quant_type == "fp16" else res.module.state_dict()
    save_bundle(target, state, new_meta, overwrite=overwrite, verify=verify)
    return details


def format_summary(s: dict[str, Any]) -> str:
    """The Quantization Summary printed by the CLI."""
    lines = [
        "Quantization Summary",
        f"  source bundle      {s['source']}",
        f"  new bundle         {s['bundle']}",
        f"  quant type         {s['quant_type']}",
        f"  size               {s['size_fp32']:,} B -> {s['size_quant']:,} B "
        f"({s['compression']:.2f}x smaller)",
        f"  latency/batch {s['batch_size']:<4} {s['latency_ms_fp32']:.2f} ms -> "
        f"{s['latency_ms_quant']:.2f} ms ({s['latency_ms_fp32'] / s['latency_ms_quant']:.2f}x)"
        + (f" on {s['kernels']} kernels" if s.get("kernels") else ""),
    ]
    if not np.isnan(s["accuracy_quant"]):
        lines.append(
            f"  accuracy           {s['accuracy_fp32']:.2%} -> {s['accuracy_quant']:.2%} "
            f"({(s['accuracy_fp32'] - s['accuracy_quant']) * 100:+.2f} pp drop)"
        )
    lines.append(f"  agreement          {s['agreement']:.2%} of decisions match FP32")
    lines.append(f"  measured on        {s['held_out_tiles']} tiles: {s['measured_on']}")
    d = s["details"]
    if "compute_dtype" in d:
        lines.append(
            f"  fp16 compute       {d['compute_dtype']} (FP16 {d['ms_fp16_compute']:.1f} ms vs "
            f"FP32 {d['ms_fp32_compute']:.1f} ms per batch; weights stored in FP16)"
        )
    if "layers" in d:
        q = [k for k, v in d["layers"].items() if v == "int8"]
        f = [k for k, v in d["layers"].items() if v != "int8"]
        lines.append(f"  quantized layers   {', '.join(q) or 'none'}")
        lines.append(f"  float layers       {', '.join(f) or 'none'}")
    if s["fp32_layers"]:
        lines.append(f"  kept in FP32       {', '.join(s['fp32_layers'])} (accuracy budget)")
    cal = s["calibration"]
    if cal:
        src = ", ".join(f"{k}: {v}" for k, v in cal["sources"].items())
        lines.append(
            f"  calibration        {cal['tiles']} {cal['method']} tiles from {src}; coverage "
            f"radius {cal['coverage_radius']:.2f} (random sample: "
            f"{cal['random_coverage_radius']:.2f}); {cal['bright_tiles']} bright, "
            f"{cal['dark_tiles']} dark"
        )
    ranges = d.get("activation_ranges")
    if ranges:
        short = ", ".join(f"{k} [{lo:.2f}, {hi:.2f}]" for k, (lo, hi) in ranges.items())
        lines.append(f"  activation ranges  {short}")
    for st in d.get("budget_steps", [])[1:]:
        lines.append(f"  budget step        {st['step']}: drop {st['drop_pp']:.2f} pp")
    return "\n".join(lines)
