"""Rebuild one shipped organism from scratch and compare it with the shipped one.

    python bench/organism.py [--name organism-p30] [--out DIR] [--threads 2] [--device cpu]

Prints the build time per stage and, per check cell (mode x level x planted/withheld), the
rebuilt accuracy beside the shipped manifest's; exits 1 when a cell differs by more than
--tolerance (default 0.05) or planted accuracy falls below 0.99. Same CPU kernels and thread
count give byte-identical files (reported as such); other hardware may differ in the last bits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    from hiertrain.organisms.build import FAMILY, build_family
    from hiertrain.organisms.shipped import manifest

    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="organism-p30", choices=sorted(FAMILY))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tolerance", type=float, default=0.05)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="organism_bench_"))
    shipped = manifest(args.name)
    t = time.perf_counter()
    built = build_family(out, {args.name: (FAMILY[args.name],) * 3}, threads=args.threads, device=args.device)[args.name]
    wall = time.perf_counter() - t
    rebuilt = json.loads((built / "manifest.json").read_text())
    print(f"rebuilt {args.name} in {wall:.0f} s ({args.threads} threads, {args.device}): {rebuilt['timings']}")
    print(f"shipped build timings: {shipped['timings']}")
    same = rebuilt["files"] == shipped["files"]
    print(f"files byte-identical to the shipped ones: {same}")
    bad = 0
    print(f"{'mode':<6} {'cell':<18} {'shipped':>8} {'rebuilt':>8}")
    for mode, cells in shipped["check"].items():
        for cell, v in cells.items():
            r = rebuilt["check"][mode][cell]["accuracy"]
            flag = abs(r - v["accuracy"]) > args.tolerance or (cell.endswith("planted") and r < 0.99)
            bad += flag
            print(f"{mode:<6} {cell:<18} {v['accuracy']:8.3f} {r:8.3f}{'  <-- differs' if flag else ''}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
