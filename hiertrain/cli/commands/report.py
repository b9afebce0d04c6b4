"""`hiertrain report RUN_DIR... --out DIR`: tables, correlation and plots across runs."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories, or folders holding them")
    parser.add_argument("--out", required=True, help="where report.md, report.json and the PNGs go")
    parser.add_argument("--allow-mixed", action="store_true", help="compare runs scored under different protocols")
    parser.add_argument("--title", default="hiertrain report")
    parser.add_argument(
        "--gallery", type=int, default=6, metavar="N",
        help="failure gallery: up to N images per category for each image run (0 = none)",
    )
    parser.add_argument("--wandb", action="store_true", help="also log tables and plots to W&B (group 'report')")
    parser.add_argument("--wandb-project", default="hiertrain")
    parser.add_argument(
        "--csv", nargs="?", const="", default=None, metavar="PATH",
        help="also write the leaderboard CSV (one row per evaluation run; default PATH: OUT/leaderboard.csv)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hiertrain.report.build import build_report, collect_runs, headline_table, log_to_wandb, unfinished_runs, write_report

    report = build_report(collect_runs(args.runs), allow_mixed=args.allow_mixed)
    path = write_report(report, args.out, title=args.title, gallery=args.gallery)
    if args.csv is not None:
        from hiertrain.report.leaderboard import write_leaderboard

        board = write_leaderboard(report.runs, args.csv or Path(args.out) / "leaderboard.csv")
        print(f"leaderboard: {board}")
    if args.wandb:
        log_to_wandb(report, Path(args.out), project=args.wandb_project)
    print(headline_table(report))
    for c in report.correlation:
        if c.get("too_few"):
            print(f"text vs visual HCA [{c['dataset']}]: n={c['n']}, too few models for a correlation (need 4)")
        else:
            print(
                f"text vs visual HCA [{c['dataset']}]: n={c['n']} pearson={c['pearson']} {c.get('pearson_interval')} "
                f"permutation p={c.get('p_value')} spearman={c['spearman']}"
            )
    for line in unfinished_runs(report):
        print(f"not in the tables: {line}")
    print(f"report: {path}")
    return 0
