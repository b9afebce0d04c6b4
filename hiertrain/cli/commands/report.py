"""`hiertrain report RUN_DIR... --out DIR`: tables, correlation and plots across runs."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    parser.add_argument("--out", required=True, help="where report.md, report.json and the PNGs go")
    parser.add_argument("--allow-mixed", action="store_true", help="compare runs scored under different protocols")
    parser.add_argument("--title", default="hiertrain report")
    parser.add_argument("--wandb", action="store_true", help="also log tables and plots to W&B (group 'report')")
    parser.add_argument("--wandb-project", default="hiertrain")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hiertrain.report.build import build_report, collect_runs, headline_table, log_to_wandb, write_report

    report = build_report(collect_runs(args.runs), allow_mixed=args.allow_mixed)
    path = write_report(report, args.out, title=args.title)
    if args.wandb:
        log_to_wandb(report, Path(args.out), project=args.wandb_project)
    print(headline_table(report))
    for c in report.correlation:
        print(f"text vs visual HCA [{c['dataset']}]: n={c['n']} pearson={c['pearson']} spearman={c['spearman']}")
    print(f"report: {path}")
    return 0
