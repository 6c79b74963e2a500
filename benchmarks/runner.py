"""Runner benchmark: reading, the model alone, predict end to end, and a naive baseline.

For each synthetic scene size, each measurement runs in its own process (so its peak RSS is
its own, taken from ``wait4``): reading every block of the file in one thread; the model alone
on as many tiles as the scene has (batch 32); ``predict_raster`` in-process; the whole
``georaster-quant predict`` command (start-up included); and a naive baseline (one windowed
read per tile, batch-1 inference, the map kept in memory and written at the end).

    python benchmarks/runner.py [--sizes 2048,8192,16384] [--naive-max 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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
from georaster_quant.backend import open_backend
b = open_backend(sys.argv[1])
n = int(sys.argv[2])
x = np.random.default_rng(0).uniform(500, 4000, (32, 4, 64, 64)).astype(np.float32)
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
t = time.perf_counter()
predict_raster(b, sys.argv[2], sys.argv[3], PredictOptions(overwrite=True))
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
    args = ap.parse_args()
    out = Path(args.out)
    weights = out / "quant" / "types" / "patch4_per_channel_int8"
    if not weights.exists():
        sys.exit("run benchmarks/quantization.py first (it makes the INT8 bundle)")
    py = sys.executable
    cli = str(Path(py).with_name("georaster-quant"))
    # The same bundle with its ONNX export inside: `--backend auto` then runs ONNX Runtime.
    # Exported in a child process: this process stays small, because a child's peak RSS (from
    # wait4) includes its parent's size at the fork.
    with_onnx = out / "quant" / "patch4_per_channel_int8_with_onnx"
    if not (with_onnx / "model.onnx").exists():
        import shutil

        shutil.rmtree(with_onnx, ignore_errors=True)
        shutil.copytree(weights, with_onnx)
        subprocess.run(
            [cli, "export", "--weights", str(with_onnx), "--format", "onnx"],
            check=True,
            capture_output=True,
        )
    rows = []
    for size in map(int, args.sizes.split(",")):
        scene = out / "data" / f"synth_{size}" / "scene.tif"
        if not scene.exists():  # in a child process too, for the same reason
            scene.parent.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [cli, "synth", str(scene.parent), "--width", str(size), "--height", str(size),
                 "--seed", "1", "--overwrite", "-q"],
                check=True,
            )  # fmt: skip
        tiles = (size // 64) ** 2
        r = {"size": size, "tiles": tiles}
        r["read_s"], _, r["read_rss_mb"] = measure([py, "-c", READ, str(scene)])
        r["model_s"], _, r["model_rss_mb"] = measure([py, "-c", MODEL, str(weights), str(tiles)])
        r["inprocess_s"], _, r["inprocess_rss_mb"] = measure(
            [py, "-c", INPROCESS, str(weights), str(scene), f"/tmp/gq_bench_{size}.tif"]
        )
        command = [cli, "predict", "--image", str(scene), "--overwrite", "-q"]
        _, r["command_s"], r["command_rss_mb"] = measure(
            [
                *command,
                "--weights",
                str(weights),
                "--backend",
                "torch",
                "--output",
                f"/tmp/gq_bench_cmd_{size}.tif",
            ],
            prints_seconds=False,
        )
        _, r["command_ort_s"], r["command_ort_rss_mb"] = measure(
            [*command, "--weights", str(with_onnx), "--output", f"/tmp/gq_bench_ort_{size}.tif"],
            prints_seconds=False,
        )
        if size <= args.naive_max:
            r["naive_s"], _, r["naive_rss_mb"] = measure(
                [py, "-c", NAIVE, str(weights), str(scene), f"/tmp/gq_naive_{size}.tif"]
            )
        r["command_vs_read"] = r["command_s"] / r["read_s"]
        r["command_ort_vs_read"] = r["command_ort_s"] / r["read_s"]
        r["inprocess_vs_floors"] = r["inprocess_s"] / (r["read_s"] + r["model_s"])
        rows.append(r)
        print(json.dumps(r), flush=True)
    (out / "runner.json").write_text(json.dumps(rows, indent=2))
    print(
        "\n| size | read (1 thread) s | model alone s | predict in-process s | command, torch s "
        "| command, auto (ONNX Runtime) s | naive s | torch cmd / read | ORT cmd / read | "
        "in-process / (read + model) | peak RSS torch cmd MB | peak RSS ORT cmd MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        naive = f"{r['naive_s']:.1f}" if "naive_s" in r else "—"
        print(
            f"| {r['size']}² | {r['read_s']:.2f} | {r['model_s']:.2f} | {r['inprocess_s']:.2f} | "
            f"{r['command_s']:.2f} | {r['command_ort_s']:.2f} | {naive} | "
            f"{r['command_vs_read']:.2f}x | {r['command_ort_vs_read']:.2f}x | "
            f"{r['inprocess_vs_floors']:.2f} | {r['command_rss_mb']:.0f} | "
            f"{r['command_ort_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
