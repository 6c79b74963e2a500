"""Synthetic scene generation: time and peak memory per scene size.

Each size runs in a fresh subprocess so its peak RSS is its own.

    python benchmarks/synth.py [--sizes 2048,8192,16384] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time, resource
from georaster_quant.synth import SceneSpec, generate_scene
size, out = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
generate_scene(out, SceneSpec(size, size, 4, 1), overwrite=True, progress=False)
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="2048,8192,16384")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in map(int, args.sizes.split(",")):
        target = out / "data" / f"synth_{size}"
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", CHILD, str(size), str(target)],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds, peak_mb = map(float, res.stdout.split())
        mb = sum(p.stat().st_size for p in target.glob("*.tif")) / 2**20
        rows.append(
            {
                "size": size,
                "seconds": seconds,
                "wall_seconds": time.perf_counter() - t0,
                "peak_rss_mb": peak_mb,
                "mpx_per_s": size * size / seconds / 1e6,
                "file_mb": mb,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    (out / "synth.json").write_text(json.dumps(rows, indent=2))
    print("\n| size | seconds | Mpx/s | peak RSS MB | files MB |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']}² | {r['seconds']:.1f} | {r['mpx_per_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['file_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
