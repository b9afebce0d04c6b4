"""`hiertrain compare RUN_A RUN_B`: B against A over the same questions, paired.

Per metric the difference B - A with a paired bootstrap interval over images, and for HCA and
leaf accuracy the exact McNemar test. Runs over different question sets (question file, mode,
sample ids, asked levels) are refused with one line saying what differs (exit 2).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", help="run directory A (the baseline)")
    parser.add_argument("run_b", help="run directory B (compared against A)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="paired bootstrap replicates (default 1000; 0 = none)")
    parser.add_argument("--ci", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument(
        "--taxonomy",
        default=None,
        metavar="JSON",
        help="place the picks with this taxonomy (default: the runs' run.json taxonomy) for path consistency and mistake severity",
    )


def run(args: argparse.Namespace) -> int:
    from hiertrain.report.compare import compare_runs, format_comparison

    result = compare_runs(args.run_a, args.run_b, n_boot=args.bootstrap, ci=args.ci, seed=args.seed, taxonomy=args.taxonomy)
    print(json.dumps(result, indent=2) if args.json else format_comparison(result))
    return 0
