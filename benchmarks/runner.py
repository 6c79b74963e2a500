"""Runner benchmark: reading, the model alone, predict end to end, and a naive baseline.

For each synthetic scene size, each measurement runs in its own process (so its peak RSS is
its own, taken from ``wait4``): reading every block of the file in one thread; the model alone
on as many tiles as the scene has (batch 32); ``predict_raster`` in-process; the whole
``georaster-quant predict`` command (start-up included), each on the torch backend and on ONNX
Runtime (the bundle with its ``model.onnx``, which ``auto`` picks); and a naive baseline (one
windowed read per tile, batch-1 inference, the map kept in memory and written at the end).

    python benchmarks/runner.py [--sizes 2048,8192,16384] [--naive-max 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from georaster_quant.arch import DEFAULT_ARCH  # torch-free: this parent stays small

READ = """
import sys, time, rasterio
t = time.perf_counter()
with rasterio.Env(GDAL_CACHEMAX=32, GDAL_NUM_THREADS=1), rasterio.open(sys.argv[1]) as src:
    for _, w in src.block_windows(1):
        src.read(window=w)
print(time.perf_counter() - t)
"""

MODEL = """
import sys, time, numpy as np
from georaster_quant.backend import batch_layout, open_backend
from georaster_quant.io import to_physical
b = open_backend(sys.argv[1])
n = int(sys.argv[2])
x = np.random.default_rng(0).uniform(500, 4000, (32, 4, 64, 64)).astype(np.float32)
x = to_physical(x, channels_last=batch_layout(b))  # the layout predict reads for it
b(x)
t = time.perf_counter()
for _ in range(n // 32):
    b(x)
print(time.perf_counter() - t)
"""

INPROCESS = """
import sys, time
from georaster_quant.backend import open_backend
from georaster_quant.runner import PredictOptions, predict_raster
b = open_backend(sys.argv[1])
stride = int(sys.argv[4]) if len(sys.argv) > 4 else None
t = time.perf_counter()
predict_raster(b, sys.argv[2], sys.argv[3], PredictOptions(overwrite=True, stride=stride))
print(time.perf_counter() - t)
"""

NAIVE = """
import sys, time, numpy as np, rasterio
from georaster_quant.backend import open_backend
from georaster_quant.tiling import TileGrid
from georaster_quant.io import RasterReader
b = open_backend(sys.argv[1])
t = time.perf_counter()
fill = np.asarray(b.meta.input.fill_values, np.float32)[:, None, None]
with RasterReader(sys.argv[2]) as r:
    grid = TileGrid(r.info.height, r.info.width, 64, 64)
    out = np.zeros(grid.shape, np.uint8)
    for tile in grid:
        data, valid = r.read(tile.window)
        x = np.where(valid[None], data, fill)[None]
        out[tile.row, tile.col] = b(x).argmax(1)[0]
    profile = dict(driver="GTiff", width=out.shape[1], height=out.shape[0], count=1,
                   dtype="uint8", crs=r.info.crs, transform=grid.output_transform(r.info.transform))
with rasterio.open(sys.argv[3], "w", **profile) as dst:
    dst.write(out, 1)
print(time.perf_counter() - t)
"""


def measure(args: list[str], prints_seconds: bool = True) -> tuple[float, float, float]:
    """(seconds printed by the child, or wall seconds; wall seconds; peak RSS MB of the child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args[:3]} failed")
    inner = float(out.split()[-1]) if prints_seconds else wall
    return inner, wall, usage.ru_maxrss / 1024


def ratio(a: list[float], b: list[float]) -> float:
    """Median of the per-repetition ratios ``a / b``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def synth_scene(out: Path, size: int, cli: str) -> Path:
    """The benchmark's ``size``² synthetic scene, made by the CLI in a child process."""
    scene = out / "data" / f"synth_{size}" / "scene.tif"
    if not scene.exists():
        scene.parent.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [cli, "synth", str(scene.parent), "--width", str(size), "--height", str(size),
             "--seed", "1", "--overwrite", "-q"],
            check=True,
        )  # fmt: skip
    return scene


def with_onnx_export(bundle: Path, copy: Path, cli: str) -> Path:
    """A copy of ``bundle`` holding its ``model.onnx`` (exported by the CLI in a child)."""
    if not (copy / "model.onnx").exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(bundle, copy)
        subprocess.run(
            [cli, "export", "--weights", str(copy), "--format", "onnx"],
            check=True,
            capture_output=True,
        )
    return copy


def stride16(scene: Path, bundles: dict[str, Path], cli: str, repeats: int) -> dict:
    """FP32 against per-channel INT8 at stride 16, both through ``auto``, alternated: the whole
    command, ``predict_raster`` in-process, and the model alone on as many tiles."""
    tiles = 128 * 128  # a 2048² scene at stride 16
    py = sys.executable
    seconds: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, bundle in bundles.items():
            out = f"/tmp/gq_bench_s16_{name}.tif"
            runs = {
                "command": ([cli, "predict", "--weights", str(bundle), "--image", str(scene),
                             "--output", out, "--stride", "16", "--overwrite", "-q"], False),
                "inprocess": ([py, "-c", INPROCESS, str(bundle), str(scene), out, "16"], True),
                "model": ([py, "-c", MODEL, str(bundle), str(tiles)], True),
            }  # fmt: skip
            for what, (argv, prints) in runs.items():
                inner, wall, _ = measure(argv, prints_seconds=prints)
                seconds.setdefault(f"{name}_{what}", []).append(inner if prints else wall)
    result = {f"{key}_s": statistics.median(v) for key, v in seconds.items()}
    for what in ("command", "inprocess", "model"):
        a, b = seconds[f"fp32_{what}"], seconds[f"int8_{what}"]
        result[f"fp32_vs_int8_{what}"] = ratio(a, b)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sizes", default="2048,8192,16384")
    ap.add_argument(
        "--naive-max",
        type=int,
        default=8192,
        help="largest size the naive baseline runs on (it is slow)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement per size")
    args = ap.parse_args()
    out = Path(args.out)
    weights = out / "quant" / "types" / f"{DEFAULT_ARCH}_per_channel_int8"
    if not weights.exists():
        sys.exit("run benchmarks/quantization.py first (it makes the INT8 bundle)")
    py = sys.executable
    cli = str(Path(py).with_name("georaster-quant"))
    # The bundles with their ONNX export inside: `--backend auto` then runs ONNX Runtime.
    # Exported in a child process: this process stays small, because a child's peak RSS (from
    # wait4) includes its parent's size at the fork.
    quant = out / "quant"
    with_onnx = with_onnx_export(weights, quant / f"{weights.name}_with_onnx", cli)
    fp32_with_onnx = with_onnx_export(
        quant / DEFAULT_ARCH, quant / f"{DEFAULT_ARCH}_with_onnx", cli
    )
    rows = []
    for size in (int(s) for s in args.sizes.split(",") if s):  # --sizes "": stride 16 only
        scene = synth_scene(out, size, cli)
        tiles = (size // 64) ** 2
        command = [cli, "predict", "--image", str(scene), "--overwrite", "-q"]
        runs = {  # name: (arguments, whether the child prints its own seconds)
            "read": ([py, "-c", READ, str(scene)], True),
            # the torch backend (the bundle alone) and ONNX Runtime (auto, with model.onnx)
            "model": ([py, "-c", MODEL, str(weights), str(tiles)], True),
            "model_ort": ([py, "-c", MODEL, str(with_onnx), str(tiles)], True),
            "inprocess": (
                [py, "-c", INPROCESS, str(weights), str(scene), f"/tmp/gq_bench_{size}.tif"],
                True,
            ),
            "inprocess_ort": (
                [py, "-c", INPROCESS, str(with_onnx), str(scene), f"/tmp/gq_ip_ort_{size}.tif"],
                True,
            ),
            "command": (
                [*command, "--weights", str(weights), "--backend", "torch",
                 "--output", f"/tmp/gq_bench_cmd_{size}.tif"],
                False,
            ),
            "command_ort": (
                [*command, "--weights", str(with_onnx),
                 "--output", f"/tmp/gq_bench_ort_{size}.tif"],
                False,
            ),
        }  # fmt: skip
        # Every repetition runs each measurement once, in turn, so a ratio compares runs made
        # close together; ratios are the median over repetitions, peak RSS the largest seen.
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        rss: dict[str, float] = dict.fromkeys(runs, 0.0)
        for _ in range(args.repeats):
            for name, (argv, prints) in runs.items():
                inner, wall, peak = measure(argv, prints_seconds=prints)
                seconds[name].append(inner if prints else wall)
                rss[name] = max(rss[name], peak)
        r = {"size": size, "tiles": tiles, "repeats": args.repeats}
        for name in runs:
            r[f"{name}_s"] = statistics.median(seconds[name])
            r[f"{name}_rss_mb"] = rss[name]
        if size <= args.naive_max:
            r["naive_s"], _, r["naive_rss_mb"] = measure(
                [py, "-c", NAIVE, str(weights), str(scene), f"/tmp/gq_naive_{size}.tif"]
            )
        r["command_vs_read"] = ratio(seconds["command"], seconds["read"])
        r["command_ort_vs_read"] = ratio(seconds["command_ort"], seconds["read"])
        for suffix in ("", "_ort"):
            model, reading = seconds[f"model{suffix}"], seconds["read"]
            floors = [x + y for x, y in zip(reading, model, strict=True)]
            r[f"inprocess{suffix}_vs_floors"] = ratio(seconds[f"inprocess{suffix}"], floors)
        rows.append(r)
        print(json.dumps(r), flush=True)
    s16 = stride16(
        synth_scene(out, 2048, cli),
        {"fp32": fp32_with_onnx, "int8": with_onnx},
        cli,
        args.repeats,
    )
    (out / "runner.json").write_text(json.dumps({"sizes": rows, "stride16": s16}, indent=2))
    print(
        "\n| size | read (1 thread) s | model alone s, torch / ORT | predict in-process s, "
        "torch / ORT | command s, torch / ORT | naive s | command / read, torch / ORT | "
        "in-process / (read + model), torch / ORT | peak RSS of the command MB, torch / ORT |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        naive = f"{r['naive_s']:.1f}" if "naive_s" in r else "—"
        print(
            f"| {r['size']}² | {r['read_s']:.2f} | {r['model_s']:.2f} / {r['model_ort_s']:.2f} | "
            f"{r['inprocess_s']:.2f} / {r['inprocess_ort_s']:.2f} | "
            f"{r['command_s']:.2f} / {r['command_ort_s']:.2f} | {naive} | "
            f"{r['command_vs_read']:.2f}x / {r['command_ort_vs_read']:.2f}x | "
            f"{r['inprocess_vs_floors']:.2f} / {r['inprocess_ort_vs_floors']:.2f} | "
            f"{r['command_rss_mb']:.0f} / {r['command_ort_rss_mb']:.0f} |"
        )
    print("\n2048², --stride 16, both through auto (ONNX Runtime):\n")
    print("| | FP32 s | per-channel INT8 s | FP32 / INT8 |\n|---|---|---|---|")
    for what in ("command", "inprocess", "model"):
        print(
            f"| {what} | {s16[f'fp32_{what}_s']:.2f} | {s16[f'int8_{what}_s']:.2f} | "
            f"{s16[f'fp32_vs_int8_{what}']:.2f}x |"
        )


if __name__ == "__main__":
    main()
