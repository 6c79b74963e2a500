"""Backend benchmark: throughput per backend × precision × batch size × threads, start-up time.

Uses the FP32 and per-channel INT8 bundles of benchmarks/quantization.py (run it first),
exports both to TorchScript and ONNX, and also builds the alternative INT8 ONNX path (ONNX
Runtime static quantization of the FP32 graph: QDQ, signed 8-bit, per channel, after
``quant_pre_process``, calibrated on the same diverse tiles) to compare it with the export of
the torch INT8 model. The INT8 bundle runs on the torch backend twice: on the kernels it loads
with here (oneDNN on x86 CPUs with AVX2 or AVX-512) and on fbgemm's, the engine it was
calibrated for. Timings alternate backends in blocks within one process; then the fastest INT8
and FP32 paths at batch 32 on 2 threads are timed again alone, A against B alternated, for the
headline ratio. Start-up is a whole fresh interpreter: import, load, first batch. Last,
``predict`` maps the 1536² scene no test uses at stride 16 through every file ``export`` wrote
(not the QDQ alternative, which it does not write) and the torch backend, and counts the output
cells where each agrees with the torch backend's map.

    python benchmarks/backends.py [--out benchmarks/results] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _common import timings

from georaster_quant.arch import DEFAULT_ARCH
from georaster_quant.backend import TorchBackend, open_backend
from georaster_quant.bundle import Bundle, read_meta
from georaster_quant.calibration import CalibrationDataReader, choose_calibration_tiles
from georaster_quant.export import EXPORT_KEY, export_bundle
from georaster_quant.predict import NODATA_CLASS

STARTUP = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from georaster_quant.backend import open_backend
b = open_backend(sys.argv[1], sys.argv[2])
x = np.load(sys.argv[3])
b(x)
print(time.perf_counter() - t0, 'torch' in sys.modules)
"""


def ort_qdq(fp32_onnx: Path, out: Path, tiles: np.ndarray) -> Path:
    """ONNX Runtime static quantization of the FP32 graph (the alternative INT8 path)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader as OrtReader,
    )
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(OrtReader):
        def __init__(self):
            self.inner = CalibrationDataReader(tiles, 32)

        def get_next(self):
            return self.inner.get_next()

        def rewind(self):
            self.inner.rewind()

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(pre))
    # DESIGN's one rule: the band normalization (and its clip) stays FP32 here too.
    normalize = [n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith("/normalize/")]
    assert normalize, f"{pre}: no /normalize/ nodes to keep in FP32"
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=normalize,
    )
    # Keep our metadata on the re-quantized graph so the ONNX Runtime backend can load it,
    # without the FP32 graph's content checksum (a file recording none is taken as it is).
    src, dst = onnx.load(str(fp32_onnx)), onnx.load(str(out))
    for p in src.metadata_props:
        value = p.value
        if p.key == EXPORT_KEY:
            value = json.dumps(
                {k: v for k, v in json.loads(value).items() if k != "content_sha256"}
            )
        dst.metadata_props.add(key=p.key, value=value)
    onnx.save(dst, str(out))
    return out


def map_agreement(
    files: dict[str, Path], bundles: dict[str, Path], scene: Path, out: Path
) -> dict[str, dict[str, float]]:
    """Share of valid output cells where ``predict`` through each file agrees with torch's map."""
    import rasterio

    from georaster_quant.runner import PredictOptions, predict_raster

    out.mkdir(parents=True, exist_ok=True)
    opts = PredictOptions(stride=16, overwrite=True)

    def classes(weights: Path, backend: str, name: str) -> np.ndarray:
        path = out / f"{name.replace('/', '_')}.tif"
        predict_raster(open_backend(weights, backend), scene, path, opts)
        with rasterio.open(path) as src:
            return src.read(1)

    result = {}
    for precision, bundle in bundles.items():
        ref = classes(bundle, "torch", f"{precision}/torch")
        valid = ref != NODATA_CLASS
        for key, path in files.items():
            if key.startswith(precision + "/") and not key.endswith("-qdq"):
                got = classes(path, "auto", key)
                result[key] = {
                    "cells": int(valid.sum()),
                    "agreement": float((got[valid] == ref[valid]).mean()),
                }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    qdir = out / "quant"
    fp32_dir = qdir / DEFAULT_ARCH
    int8_dir = qdir / "types" / f"{DEFAULT_ARCH}_per_channel_int8"
    if not int8_dir.exists():
        sys.exit("run benchmarks/quantization.py first (it makes the bundles)")
    edir = out / "exported"
    edir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, bundle in (("fp32", fp32_dir), ("int8", int8_dir)):
        files[f"{name}/torchscript"] = Path(
            export_bundle(bundle, "torchscript", edir / f"{name}.pt")["path"]
        )
        files[f"{name}/onnxruntime"] = Path(
            export_bundle(bundle, "onnx", edir / f"{name}.onnx")["path"]
        )
    scene = out / "data" / "test_1536" / "scene.tif"
    tiles = choose_calibration_tiles([scene], read_meta(fp32_dir), 128).tiles
    files["int8/onnxruntime-qdq"] = ort_qdq(
        files["fp32/onnxruntime"], edir / "int8_qdq.onnx", tiles
    )

    # Agreement of every path with the torch backend of the same precision.
    ref = {n: open_backend(b)(tiles).argmax(1) for n, b in (("fp32", fp32_dir), ("int8", int8_dir))}
    agreement = {
        k: float((open_backend(p)(tiles).argmax(1) == ref[k.split("/")[0]]).mean())
        for k, p in files.items()
    }
    fbgemm = TorchBackend(Bundle(int8_dir, engine="fbgemm"))(tiles).argmax(1)
    agreement["int8/torch-fbgemm"] = float((fbgemm == ref["int8"]).mean())

    results: dict[str, dict[str, float]] = {}
    for threads in (1, 2):
        runners = {}
        for name, bundle in (("fp32", fp32_dir), ("int8", int8_dir)):
            runners[f"{name}/torch"] = open_backend(bundle, "torch", threads)
        # The kernels the INT8 bundle was calibrated for, against the ones it loads with here.
        runners["int8/torch-fbgemm"] = TorchBackend(Bundle(int8_dir, engine="fbgemm"), threads)
        for k, p in files.items():
            runners[k] = open_backend(p, threads=threads)
        torch.set_num_threads(threads)
        for bs in (1, 8, 32):
            x = np.ascontiguousarray(np.resize(tiles, (bs, *tiles.shape[1:])))
            ms = timings(runners, x, args.repeats)
            results[f"b{bs}_t{threads}"] = {k: bs / (v / 1000) for k, v in ms.items()}
            print(
                f"batch {bs} threads {threads}:",
                json.dumps({k: round(v) for k, v in results[f"b{bs}_t{threads}"].items()}),
                flush=True,
            )

    # The headline ratio, measured as A against B alone (the runners above are the 2-thread
    # ones): the table's rotation also runs the slower paths between these two.
    keys = list(next(iter(results.values())))
    best = {
        prec: max((k for k in keys if k.startswith(prec)), key=lambda k: results["b32_t2"][k])
        for prec in ("fp32", "int8")
    }
    x32 = np.ascontiguousarray(np.resize(tiles, (32, *tiles.shape[1:])))
    ab_ms = timings({k: runners[k] for k in best.values()}, x32, 10 * args.repeats, block=10)
    ab = {"fp32": best["fp32"], "int8": best["int8"], "ms_per_batch": ab_ms}
    ab["ratio"] = ab_ms[best["fp32"]] / ab_ms[best["int8"]]

    np.save(edir / "x.npy", tiles[:32])
    startup = {}
    kinds = [("fp32/torch", fp32_dir), ("int8/torch", int8_dir), *files.items()]
    for k, path in kinds:
        backend = k.split("/")[1].replace("-qdq", "")
        runs = []
        for _ in range(3):
            res = subprocess.run(
                [sys.executable, "-c", STARTUP, str(path), backend, str(edir / "x.npy")],
                capture_output=True,
                text=True,
                check=True,
            )
            seconds, has_torch = res.stdout.split()
            runs.append(float(seconds))
        startup[k] = {"seconds": float(np.median(runs)), "imports_torch": has_torch == "True"}

    cpu = torch.backends.cpu.get_cpu_capability()
    engine = Bundle(int8_dir).engine
    report = {
        "cpu_capability": cpu,
        "int8_torch_engine": engine,
        "tiles_per_s": results,
        "startup": startup,
        "agreement_with_torch": agreement,
        "fastest_int8_vs_fastest_fp32_b32_t2": ab,
        "predict_map_agreement_with_torch": map_agreement(
            files,
            {"fp32": fp32_dir, "int8": int8_dir},
            out / "data" / "test_1536" / "scene.tif",
            edir / "maps",
        ),
    }
    (out / "backends.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nCPU capability: {cpu}; INT8 torch kernels: {engine}; "
        "tiles per second (4x64x64), higher is better\n"
    )
    print("| backend | agree | " + " | ".join(results) + " | start-up s | imports torch |")
    print("|---|---|" + "---|" * len(results) + "---|---|")
    for k in keys:
        agree = "ref" if k.endswith("/torch") else f"{agreement[k]:.2%}"
        start = startup.get(k)  # not timed for torch-fbgemm: the same start as int8/torch
        print(
            f"| {k} | {agree} | "
            + " | ".join(f"{results[c][k]:.0f}" for c in results)
            + (f" | {start['seconds']:.2f} | {start['imports_torch']} |" if start else " | — | |")
        )
    table = results["b32_t2"][best["int8"]] / results["b32_t2"][best["fp32"]]
    print(f"\nfastest at batch 32, 2 threads: {best['fp32']} and {best['int8']}")
    print(f"fastest INT8 / fastest FP32 in the table: {table:.2f}x")
    print(
        f"the two alone, alternated in blocks of 10: {ab_ms[best['fp32']]:.2f} against "
        f"{ab_ms[best['int8']]:.2f} ms per batch, {ab['ratio']:.2f}x"
    )
    print("\npredict, 1536² unseen scene, stride 16: cells agreeing with the torch backend's map")
    for k, v in report["predict_map_agreement_with_torch"].items():
        print(f"  {k}: {v['agreement']:.2%} of {v['cells']} cells")


if __name__ == "__main__":
    main()
