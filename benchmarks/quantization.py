"""Quantization benchmark: every quant type and observer against the FP32 bundle.

Trains (or reuses) the default model on a 2048² synthetic scene, quantizes it every way,
scores every bundle on all 16×16 cells of a 1536² scene it never saw, and times eager FP32,
ONNX Runtime FP32 (the fastest FP32 path here) and each quantized bundle alternately in one
process at batch 1 and 32 with 1 and 2 threads. Eager torch runs as ``predict`` runs it (the
torch backend, handed the channels-last batches it asks for; ONNX Runtime gets NCHW ones).
Prints Markdown tables and writes JSON.

    python benchmarks/quantization.py [--out benchmarks/results] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import ort_runner, timings

from georaster_quant.arch import DEFAULT_ARCH
from georaster_quant.backend import TorchBackend
from georaster_quant.bundle import Bundle
from georaster_quant.calibration import choose_calibration_tiles
from georaster_quant.evaluation import evaluate
from georaster_quant.quantized_bundle import QuantizeOptions, quantize_bundle
from georaster_quant.synth import SceneSpec, generate_scene
from georaster_quant.training import TrainConfig, train

QUANT_TYPES = ("fp16", "dynamic_int8", "static_int8", "per_channel_int8", "qat_int8")
ENGINE_ROWS = ("static_int8", "per_channel_int8")
ENGINES = ("fbgemm", "onednn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the bundles and observer table of a previous run; re-time only",
    )
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    tr, te = data / "train_2048", data / "test_1536"
    data.mkdir(parents=True, exist_ok=True)
    if not (tr / "scene.tif").exists():
        generate_scene(tr, SceneSpec(2048, 2048, 4, 0), progress=False, overwrite=True)
    if not (te / "scene.tif").exists():
        generate_scene(te, SceneSpec(1536, 1536, 4, 4242), progress=False, overwrite=True)
    qdir = out / "quant"
    qdir.mkdir(parents=True, exist_ok=True)
    fp32_dir = qdir / DEFAULT_ARCH
    if not (fp32_dir / "bundle.json").exists():
        train(
            tr / "scene.tif",
            tr / "labels.tif",
            fp32_dir,
            TrainConfig(epochs=args.epochs),
            overwrite=True,
            progress=False,
        )
    scene, labels = str(te / "scene.tif"), str(te / "labels.tif")
    cpu = torch.backends.cpu.get_cpu_capability()
    result = {"cpu_capability": cpu, "torch": torch.__version__, "test_scene": scene}

    # Every quant type with the defaults, then the observers for the static types.
    bundles = {"fp32": fp32_dir}
    previous = out / "quantization.json"
    reuse = args.reuse and previous.exists()
    for qt in QUANT_TYPES:
        bundles[qt] = qdir / "types" / f"{fp32_dir.name}_{qt}"
        if reuse and bundles[qt].exists():
            continue
        opts = QuantizeOptions(
            qt,
            data=[str(tr / "scene.tif")],
            labels=str(tr / "labels.tif") if qt == "qat_int8" else None,
        )
        quantize_bundle(fp32_dir, opts, qdir / "types", overwrite=True)
    observer_rows = json.loads(previous.read_text())["observers"] if reuse else []
    for qt in () if reuse else ("static_int8", "per_channel_int8"):
        for obs in ("minmax", "moving_average", "histogram"):
            for method in ("diverse", "random"):
                opts = QuantizeOptions(
                    qt, data=[str(tr / "scene.tif")], observer=obs, calibration=method
                )
                s = quantize_bundle(fp32_dir, opts, qdir / f"obs_{obs}_{method}", overwrite=True)
                r = evaluate([fp32_dir, s["bundle"]], scene, labels, stride=16)
                observer_rows.append(
                    {
                        "quant_type": qt,
                        "observer": obs,
                        "calibration": method,
                        "accuracy_fp32": r[0]["accuracy"],
                        "accuracy": r[1]["accuracy"],
                        "drop_pp": (r[0]["accuracy"] - r[1]["accuracy"]) * 100,
                        "agreement": r[1]["agreement"],
                        "cells": r[1]["cells"],
                    }
                )
                print(json.dumps(observer_rows[-1]), flush=True)
    result["observers"] = observer_rows

    evals = evaluate(list(bundles.values()), scene, labels, stride=16)
    loaded = {k: Bundle(p) for k, p in bundles.items()}
    calib = choose_calibration_tiles([scene], loaded["fp32"].meta, 32).tiles
    latency = {}
    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    for threads in (1, 2):
        # Torch as predict runs it (TorchBackend: the inference form of each model, and the
        # batch layout it asks for), against ONNX Runtime FP32 on NCHW batches. Each thread
        # count loads the bundles afresh, as a process does: frozen INT8 models sharing the
        # packed weights of models first run on 1 thread ran up to 2.5x slower on 2.
        runners = {
            "fp32_eager": TorchBackend(Bundle(bundles["fp32"]), threads),
            "fp32_onnxruntime": ort_runner(loaded["fp32"].model, threads),
        }
        for qt in QUANT_TYPES:
            runners[qt] = TorchBackend(Bundle(bundles[qt]), threads)
        # Both engines' kernels for the static types, whichever kernel_engine picks here:
        # the measurement that picks it.
        for qt in ENGINE_ROWS:
            for engine in engines:
                runners[f"{qt}_{engine}"] = TorchBackend(
                    Bundle(bundles[qt], engine=engine), threads
                )
        # The same backend handed NCHW batches (a plain function asks for no layout): what
        # the layout is worth.
        runners["per_channel_int8_nchw"] = runners["per_channel_int8"].__call__
        for bs in (1, 32):
            latency[f"b{bs}_t{threads}"] = timings(
                runners, np.ascontiguousarray(calib[:bs]), args.repeats
            )
    result["latency_ms"] = latency
    result["kernel_engine"] = loaded["per_channel_int8"].engine
    rows = []
    for qt, r in zip(bundles, evals, strict=True):
        lat = {k: v["fp32_eager" if qt == "fp32" else qt] for k, v in latency.items()}
        rows.append(
            {
                "quant_type": qt,
                "accuracy": r["accuracy"],
                "agreement": r["agreement"],
                "drop_pp": (evals[0]["accuracy"] - r["accuracy"]) * 100,
                "size_bytes": r["size_bytes"],
                "compression": evals[0]["size_bytes"] / r["size_bytes"],
                "cells": r["cells"],
                "latency_ms": lat,
            }
        )
    result["types"] = rows
    (out / "quantization.json").write_text(json.dumps(result, indent=2))

    cells = rows[0]["cells"]
    print(
        f"\nCPU capability: {cpu}; INT8 kernels: {result['kernel_engine']}; "
        f"test scene 1536² seed 4242, stride 16, {cells} cells\n"
    )
    print(
        "| type | accuracy | drop (pp) | agreement | size (B) | smaller | "
        "b32 t2 ms | b32 t1 ms | b1 t2 ms | b1 t1 ms | b32 t2 speed-up vs fastest FP32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fastest = min(latency["b32_t2"]["fp32_eager"], latency["b32_t2"]["fp32_onnxruntime"])
    for r in rows:
        lat = r["latency_ms"]
        print(
            f"| {r['quant_type']} | {r['accuracy']:.2%} | {r['drop_pp']:+.2f} | "
            f"{r['agreement']:.2%} | {r['size_bytes']:,} | {r['compression']:.2f}x | "
            f"{lat['b32_t2']:.2f} | {lat['b32_t1']:.2f} | {lat['b1_t2']:.2f} | "
            f"{lat['b1_t1']:.2f} | {fastest / lat['b32_t2']:.2f}x |"
        )
    for name, label in [
        ("fp32_onnxruntime", "fp32 (ONNX Runtime)"),
        *((f"{qt}_{e}", f"{qt} ({e} kernels)") for qt in ENGINE_ROWS for e in engines),
        ("per_channel_int8_nchw", "per_channel_int8 (NCHW batches)"),
    ]:
        lat = {k: v[name] for k, v in latency.items()}
        print(
            f"| {label} | | | | | | {lat['b32_t2']:.2f} | {lat['b32_t1']:.2f} | "
            f"{lat['b1_t2']:.2f} | {lat['b1_t1']:.2f} | {fastest / lat['b32_t2']:.2f}x |"
        )
    print("\n| type | observer | calibration | accuracy | drop (pp) | agreement |")
    print("|---|---|---|---|---|---|")
    for r in observer_rows:
        print(
            f"| {r['quant_type']} | {r['observer']} | {r['calibration']} | "
            f"{r['accuracy']:.2%} | {r['drop_pp']:+.2f} | {r['agreement']:.2%} |"
        )


if __name__ == "__main__":
    main()
