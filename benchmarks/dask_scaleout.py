"""Dask benchmark: the same scene through the single-process runner, ``predict`` on a local
cluster, and the lazy DataArray API at several chunk sizes, with each worker's peak memory.

Every run happens in a child process (its own start-up, its own memory). The lazy runs use a
LocalCluster of two single-threaded worker processes and report each worker's peak RSS
(with GDAL's default block cache and with GDAL_CACHEMAX=64), which is what docs/dask.md's
memory advice rests on.

    python benchmarks/dask_scaleout.py [--size 8192] [--chunks 1024,2048,4096] [--weights BUNDLE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from runner import synth_scene  # the same scenes as the runner benchmark

from georaster_quant.arch import DEFAULT_ARCH

LAZY = """
import json, logging, sys, time
import numpy as np, rasterio, rioxarray
from distributed import Client, LocalCluster
from georaster_quant.lazy import predict_dataarray

weights, scene, chunks, reference = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

def peak_rss_mb():
    # VmHWM belongs to this process's own memory since exec; ru_maxrss would also count the
    # parent's size at the fork that started the worker.
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.CRITICAL) as c, Client(c) as cl:
        cl.run(lambda: __import__("georaster_quant.backend"))
        t = time.perf_counter()
        da = rioxarray.open_rasterio(scene, chunks=chunks)
        ds = predict_dataarray(da, weights, chunks=chunks)
        classes = ds["class"].compute()
        seconds = time.perf_counter() - t
        rss = cl.run(peak_rss_mb)
    with rasterio.open(reference) as src:
        same = bool(np.array_equal(src.read(1), classes.values))
    print(json.dumps({"seconds": seconds, "worker_rss_mb": sorted(rss.values()), "same": same,
                      "tasks": int(np.prod([len(c) for c in ds["class"].chunks]))}))
"""


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:4]} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--chunks", default="1024,2048,4096")
    ap.add_argument("--weights", default=None, help="default: the per-channel INT8 bundle")
    args = ap.parse_args()
    out = Path(args.out)
    weights = Path(args.weights or out / "quant" / f"{DEFAULT_ARCH}_per_channel_int8_with_onnx")
    if not weights.exists():
        sys.exit(f"{weights}: missing; run benchmarks/quantization.py and runner.py first")
    cli = str(Path(sys.executable).with_name("georaster-quant"))
    scene = synth_scene(out, args.size, cli)
    base = [cli, "predict", "--weights", str(weights), "--image", str(scene), "--overwrite", "-q"]
    local = f"/tmp/gq_dask_local_{args.size}.tif"
    result: dict = {"size": args.size, "weights": str(weights)}
    result["command_s"], _ = run([*base, "--output", local])
    result["command_dask_workers_2_s"], _ = run(
        [*base, "--output", f"/tmp/gq_dask_cluster_{args.size}.tif", "--dask-workers", "2"]
    )
    result["lazy"] = []
    for chunks in map(int, args.chunks.split(",")):
        # Workers read through rioxarray, so GDAL's block cache is whatever their environment
        # says: its default (5 % of RAM) against a deliberate 64 MB.
        for cache in (None, "64"):
            env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
            if cache:
                env["GDAL_CACHEMAX"] = cache
            lazy = [sys.executable, "-c", LAZY, str(weights), str(scene), str(chunks), local]
            _, text = run(lazy, env)
            row = {"chunks": chunks, "gdal_cachemax": cache or "default (5% of RAM)"}
            row.update(json.loads(text.strip().splitlines()[-1]))
            result["lazy"].append(row)
            print(json.dumps(row), flush=True)
    (out / "dask_scaleout.json").write_text(json.dumps(result, indent=2))
    print(
        f"\n{args.size}² scene, {weights.name}: predict command {result['command_s']:.1f} s, "
        f"with --dask-workers 2 {result['command_dask_workers_2_s']:.1f} s (cluster start-up "
        "included)\n"
    )
    print("| chunk side (px) | tasks | GDAL_CACHEMAX | compute s | peak RSS per worker MB | same |")
    print("|---|---|---|---|---|---|")
    for r in result["lazy"]:
        rss = " / ".join(f"{m:.0f}" for m in r["worker_rss_mb"])
        print(
            f"| {r['chunks']} | {r['tasks']} | {r['gdal_cachemax']} | {r['seconds']:.1f} | {rss} "
            f"| {r['same']} |"
        )


if __name__ == "__main__":
    main()
