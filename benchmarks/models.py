"""Model-choice table: accuracy and FP32/INT8 cost per architecture.

Trains every named architecture on one synthetic scene, scores it on the cells of another
(stride 16), quantizes it to per-channel static INT8 (calibrated for fbgemm) and times FP32
and INT8 forward passes alternately in one run: each on torch as the torch backend runs it
(INT8 on the kernels ``kernel_engine`` picks here, in the traced and frozen inference form;
channels-last batches) and on ONNX Runtime (NCHW batches). Prints a Markdown table and writes JSON.

    python benchmarks/models.py [--size 2048] [--epochs 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import ort_runner, timings, torch_runner

from georaster_quant.bundle import Bundle
from georaster_quant.evaluation import evaluate
from georaster_quant.export import frozen, traced
from georaster_quant.io import RasterReader
from georaster_quant.model import ARCHITECTURES, count_macs
from georaster_quant.predict import predict_grid
from georaster_quant.quantize import (
    QuantConfig,
    kernel_engine,
    load_state,
    quantize,
    quiet,
    rebuild,
)
from georaster_quant.sampling import sample_tiles
from georaster_quant.synth import SceneSpec, generate_scene
from georaster_quant.training import TrainConfig, train


class ModuleBackend:
    """A bare module behind the backend interface (for the INT8 column)."""

    name = "torch-int8"

    def __init__(self, module, meta):
        self.module, self.meta, self.size_bytes = module, meta, 0

    def __call__(self, batch):
        with torch.inference_mode(), quiet():
            return torch.softmax(self.module(torch.from_numpy(batch)), 1).numpy()


def time_per_tile(bundle, int8, batch, threads, repeats):
    """µs per tile of FP32 and INT8, each on torch and on ONNX Runtime, timed alternately.

    ``int8`` is the fbgemm-packed module ONNX export takes; torch runs it repacked for the
    kernels ``kernel_engine`` picks, traced in its inference form and frozen, as the torch
    backend does.
    """
    torch.set_num_threads(threads)
    config = QuantConfig("per_channel_int8")
    engine = kernel_engine(config.quant_type, config.engine)
    repacked = load_state(rebuild(bundle.model, config, {}), int8.state_dict(), engine)
    runners = {
        "fp32": torch_runner(bundle.model, channels_last=True),
        "ort_fp32": ort_runner(bundle.model, threads),
        "int8": torch_runner(frozen(traced(repacked, batch[:2])), channels_last=True),
        "ort_int8": ort_runner(int8, threads),
    }
    return {k: v * 1000 / len(batch) for k, v in timings(runners, batch, repeats).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--archs", default=",".join(ARCHITECTURES))
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--reuse", action="store_true", help="reuse bundles trained by a previous run")
    ap.add_argument(
        "--repeats", type=int, default=50, help="timed calls per runner and thread count"
    )
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    tr = data / f"train_{args.size}"
    te = data / f"test_{args.size * 3 // 4}"
    if not (tr / "scene.tif").exists():
        generate_scene(tr, SceneSpec(args.size, args.size, 4, 0), progress=False, overwrite=True)
    if not (te / "scene.tif").exists():
        n = args.size * 3 // 4
        generate_scene(te, SceneSpec(n, n, 4, 4242), progress=False, overwrite=True)
    with RasterReader(tr / "scene.tif") as img, RasterReader(tr / "labels.tif") as lab:
        calib = sample_tiles(
            img,
            lab,
            tile_size=64,
            stride=64,
            label_footprint=32,
            num_classes=6,
            max_tiles=256,
            seed=1,
        )
    rows = []
    for arch in args.archs.split(","):
        bdir = out / "models" / arch
        bdir.parent.mkdir(parents=True, exist_ok=True)
        if not (args.reuse and (bdir / "bundle.json").exists()):
            train(
                tr / "scene.tif",
                tr / "labels.tif",
                bdir,
                TrainConfig(arch=arch, epochs=args.epochs),
                overwrite=True,
                progress=False,
            )
        bundle = Bundle(bdir)
        x = calib.filled(np.asarray(bundle.meta.input.fill_values, np.float32))
        int8 = quantize(
            bundle.model,
            [x[i : i + 32] for i in range(0, len(x), 32)],
            QuantConfig("per_channel_int8"),
        ).module
        fp32_eval = evaluate([bdir], te / "scene.tif", te / "labels.tif", stride=16)[0]
        pred = predict_grid(ModuleBackend(int8, bundle.meta), te / "scene.tif", stride=16)
        ref = predict_grid(ModuleBackend(bundle.model, bundle.meta), te / "scene.tif", stride=16)
        truth_acc = fp32_eval["accuracy"]
        agree = float((pred.classes == ref.classes)[ref.valid].mean())
        batch = x[:32]
        t2 = time_per_tile(bundle, int8, batch, threads=2, repeats=args.repeats)
        t1 = time_per_tile(bundle, int8, batch, threads=1, repeats=args.repeats)
        macs = count_macs(bundle.model)
        row = {
            "arch": arch,
            "spec": bundle.meta.architecture.spec,
            "params": sum(p.numel() for p in bundle.model.parameters()),
            "macs_per_tile": macs,
            "macs_per_pixel": macs / 64 / 64,
            "val_tile_accuracy": bundle.meta.metrics["fp32"]["val_accuracy"],
            "test_cell_accuracy_fp32": truth_acc,
            "int8_agreement": agree,
            "fp32_us_per_tile_2t": t2["fp32"],
            "ort_fp32_us_per_tile_2t": t2["ort_fp32"],
            "int8_us_per_tile_2t": t2["int8"],
            "ort_int8_us_per_tile_2t": t2["ort_int8"],
            "fp32_us_per_tile_1t": t1["fp32"],
            "ort_fp32_us_per_tile_1t": t1["ort_fp32"],
            "int8_us_per_tile_1t": t1["int8"],
            "ort_int8_us_per_tile_1t": t1["ort_int8"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    cpu = torch.backends.cpu.get_cpu_capability()
    result = {"cpu_capability": cpu, "torch": torch.__version__, "rows": rows}
    (out / "models.json").write_text(json.dumps(result, indent=2))
    print(f"\nCPU capability: {cpu}; batch 32 tiles of 4x64x64; test scene {te.name}, stride 16\n")
    print(
        "| arch | MACs/tile | MACs/px | val tile acc | test cell acc | INT8 agree | "
        "FP32 torch µs/tile 2t | FP32 ORT 2t | INT8 torch 2t | INT8 ORT 2t | FP32 torch 1t | "
        "FP32 ORT 1t | INT8 torch 1t | INT8 ORT 1t | fastest INT8 vs fastest FP32 2t | 1t |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = {}
        for t in ("2t", "1t"):
            fp32 = min(r[f"fp32_us_per_tile_{t}"], r[f"ort_fp32_us_per_tile_{t}"])
            int8 = min(r[f"int8_us_per_tile_{t}"], r[f"ort_int8_us_per_tile_{t}"])
            speedup[t] = fp32 / int8
        times = " | ".join(
            f"{r[f'{k}_us_per_tile_{t}']:.0f}"
            for t in ("2t", "1t")
            for k in ("fp32", "ort_fp32", "int8", "ort_int8")
        )
        print(
            f"| {r['arch']} | {r['macs_per_tile'] / 1e6:.2f} M | {r['macs_per_pixel']:.0f} | "
            f"{r['val_tile_accuracy']:.1%} | {r['test_cell_accuracy_fp32']:.1%} | "
            f"{r['int8_agreement']:.1%} | {times} | {speedup['2t']:.2f}x | {speedup['1t']:.2f}x |"
        )


if __name__ == "__main__":
    main()
