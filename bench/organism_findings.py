"""The calibration study on the shipped organisms, with hiertrain's own commands (CPU, ~3 min).

    python bench/organism_findings.py [--out runs/organism_findings]

world + export -> `hiertrain test` image and text for each organism -> `organism check`
(planted vs withheld) -> probes on organism-p30 -> `hiertrain report` (text-vs-visual HCA
correlation, galleries). Findings (i)-(iii);
(iv) (LoRA on set-aside leaves, configs/organism/organism_lora_setaside.yaml) runs in `make demo`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from hiertrain.cli.main import main as cli

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/organism_findings"))
    out = ap.parse_args().out.resolve()

    def run(*argv: str) -> None:
        if cli(list(argv)):
            raise SystemExit(f"failed: hiertrain {' '.join(argv)}")

    def config(name: str) -> Path:
        text = (ROOT / "configs" / "organism" / f"organism_{name}.yaml").read_text()
        text = re.sub(r"(?<![\w/.-])runs/demo/organism(?=/|\b)", out.as_posix(), text)
        (out / "configs").mkdir(parents=True, exist_ok=True)
        path = out / "configs" / f"{name}.yaml"
        path.write_text(text)
        return path

    run("organism", "world", "--out", str(out / "world"))
    run("organism", "export", "--out", str(out / "models"))
    from hiertrain.organisms.shipped import shipped_names

    for name in shipped_names():
        for mode in ("image", "text"):
            run("test", "--config", str(config(mode)), f"--model.pretrained={out / 'models' / name}", "--trainer.enable_progress_bar=false")
    for run_dir in sorted((out / "eval").glob("*-v0")):
        run("organism", "check", "--run", str(run_dir))
    run("predict", "--config", str(config("probing_extract")))
    run("fit", "--config", str(config("probing_probes")))
    run("report", str(out / "eval"), str(out / "probing"), "--out", str(out / "report"), "--title", "calibration organisms")
    rows = json.loads((out / "report" / "report.json").read_text())["tables"]
    print(json.dumps({k: rows[k] for k in ("visual",) if k in rows}, indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
