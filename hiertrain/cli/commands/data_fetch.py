"""`hiertrain data fetch paper`: download the paper's question banks, LoRA training sets and
probing image lists at the pinned commit, each verified against its git blob id
(hiertrain.paper.paper_files)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=("paper",), help="what to fetch: the paper's repository files")
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (e.g. data/paper)")
    parser.add_argument(
        "--what", choices=("annotations", "training", "probing", "all"), default="all",
        help="annotations: the 10 non-CUB question banks; training: train_plant_{img,text}.json; "
        "probing: the VLM probing image lists (default: all)",
    )  # fmt: skip
    parser.add_argument("--base-url", help="mirror to download from instead of raw GitHub at the pinned commit "
                        "(files are requested as BASE_URL/<repository path>)")
    parser.add_argument("--manifest", type=Path, help="manifest JSON (default: the one shipped in the package)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hiertrain.paper.paper_files import fetch_files, load_manifest

    manifest = load_manifest(args.manifest)
    files = manifest.fetchable(args.what)
    base = args.base_url or manifest.base_url
    report = fetch_files(files, args.out, base, progress=not args.quiet and sys.stderr.isatty(), timeout=args.timeout)
    for name in report.cleaned:
        print(f"removed  {name} (temp file of an interrupted earlier fetch)")
    for name in report.downloaded:
        print(f"fetched  {args.out / name}")
    for name in report.skipped:
        print(f"verified {args.out / name} (already present)")
    print(
        f"{len(report.downloaded)} downloaded, {len(report.skipped)} already present; all {len(files)} match "
        f"{manifest.repository}@{manifest.commit[:7]} blob ids"
    )
    return 0
