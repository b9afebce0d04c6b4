"""Scale: wall time and peak RSS of hiertrain's file operations at 10k / 100k / 1M records, side by
side with the paper's `utils/metric.py` on the same records.

Synthetic 7-level iNat-plant records (real paths from the shared taxonomy when it is there): a
question bank, our predictions JSONL (every level with its question text and reply, as a run
writes it) and the same predictions in the paper's result JSON (indent 4, as its scripts write
it). Each operation runs in its own child process (`os.wait4` gives its peak RSS), in one run,
one after the other:

- `score predictions.jsonl` (default bootstrap 1000) and `--bootstrap 0`; `score_tax`: the first with
  `--taxonomy` (every pick placed in the taxonomy: mistake severity, path consistency, their intervals);
- `score results.json --protocol paper`;
- the paper's `utils/metric.py --file_path results.json`: the mirror's file when
  `--paper-repo` (a bare git dir) has it, else its rule re-implemented here (`_PAPER_RULE`:
  the same extraction and loops, for timing only);
- `data check --questions` and `data questions` (random distractors) on a bank / image list of N;
- the resume skip: what a rerun of a run with N done samples does before it asks its first
  question: the data module's setup on the bank of N (its index read from the cache), the
  finished ids (`RunDirectory.finished_ids`) and the loader's remaining samples;
- `test_limit`: `hiertrain test --data.limit 10` in text mode (a tiny Qwen2.5-VL built once in
  the work folder, `hiertrain tiny`) on the bank of N with its index cached (built once, not
  timed), and `test_limit_cold` the same with no index cache (`HIERTRAIN_INDEX_CACHE=off`: the
  one pass over the bank is timed too). Each run starts in an empty run directory.

`--ops check,questions,test_limit,...` without a scoring op writes only the bank, image list
and taxonomy of N (same records as the full set: the random draws are the same).

Ratios (`vs metric.py`: its time / this operation's, so > 1 = faster) are printed against the
paper's script measured in the same run, on wall time and on CPU time (user + system of the child,
much less sensitive to other processes on a shared machine). Figures depend on the
machine's load: the bench prints `uptime` before and after.

    python bench/scale.py [--sizes 10000,100000,1000000] [--work DIR] [--ops score,score0,paper,...]
                          [--repeats 1] [--json out.json] [--paper-repo BARE_GIT_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INAT_PLANTS = REPO.parent / "shared/data/taxonomies/hierarchy_Inat_plantae.json"
PAPER_REPO = Path("/work/.mirror/yuanqing-ai+LLM-Hierarchical-Consistency/repo")
LEVELS = ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
OPS = ("score", "score0", "score_tax", "paper", "metric_py", "check", "questions", "resume", "test_limit", "test_limit_cold")
BANK_OPS = {"check", "questions", "test_limit", "test_limit_cold"}  # need no predictions

# The paper's utils/metric.py rule (extraction from level 2, HCA / POR / strict POR / TOR / LNA /
# per-layer loops over Python lists after json.load), used only when the mirror is not there.
_PAPER_RULE = r'''
import json, sys
def low(h): return [x.lower() if x is not None else None for x in h]
data = json.load(open(sys.argv[1]))
T, P = [], []
for item in data:
    t, p, k = [], [], 2
    while f"ground_truth_level{k}" in item:
        if item[f"ground_truth_level{k}"] is not None: t.append(item[f"ground_truth_level{k}"])
        k += 1
    k = 2
    while f"predicted_level{k}" in item:
        if item[f"predicted_level{k}"] is not None: p.append(item[f"predicted_level{k}"])
        k += 1
    if t and p: T.append(t); P.append(p)
n = len(T); depth = max(max(map(len, T)), max(map(len, P)))
tot = [0] * depth; cor = [0] * depth
tor = por = spor = hca = lna = 0.0
for p, t in zip(P, T):
    lp, lt = low(p), low(t)
    for j in range(depth):
        if j < len(lt):
            tot[j] += 1; cor[j] += j < len(lp) and lp[j] == lt[j]
    tor += sum(1 for j in range(len(lt) - 1) if j + 1 < len(lp) and lp[j] == lt[j] and lp[j + 1] == lt[j + 1]) / (len(lt) - 1) if len(lt) > 1 else 0
    por += sum(1 for a, b in zip(lp, lt) if a == b) / len(lt)
    lcp = 0
    for a, b in zip(lp, lt):
        if a != b: break
        lcp += 1
    spor += lcp / len(lt); hca += lp == lt; lna += (p[-1] or "").lower() == (t[-1] or "").lower()
print(f"HCA {100 * hca / n:.4f} POR {100 * por / n:.4f} TOR {100 * tor / n:.4f} LNA {100 * lna / n:.4f}")
'''


def _paths(seed: int) -> list[list[str]]:
    if INAT_PLANTS.is_file():
        return [p for p in json.loads(INAT_PLANTS.read_text()).values() if len(p) == 7]
    return [[f"{name} {i % (k + 2)}" for k, name in enumerate(LEVELS)] for i in range(4000)]


def write_files(n: int, folder: Path, seed: int = 0, bank_only: bool = False) -> dict[str, Path]:
    """bank.jsonl, images.jsonl, predictions.jsonl and results.json of `n` records (kept when
    present); `bank_only`: the first two (the same records) and no predictions."""
    from hiertrain.protocol import prompts

    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / name for name in ("bank.jsonl", "images.jsonl", "predictions.jsonl", "results.json")}
    done = folder / ".complete"
    if done.is_file() or (bank_only and (folder / ".bank_complete").is_file()):
        return files
    if bank_only:
        files["predictions.jsonl"] = files["results.json"] = Path(os.devnull)
    rng = random.Random(seed)
    paths = _paths(seed)
    by_level = [sorted({p[k] for p in paths}) for k in range(7)]
    taxonomy = folder / "taxonomy.json"
    taxonomy.write_text(json.dumps({p[-1]: p for p in paths}), encoding="utf-8")
    files["taxonomy.json"] = taxonomy
    with (
        open(files["bank.jsonl"], "w", encoding="utf-8") as bank,
        open(files["images.jsonl"], "w", encoding="utf-8") as images,
        open(files["predictions.jsonl"], "w", encoding="utf-8") as preds,
        open(files["results.json"], "w", encoding="utf-8") as paper,
    ):
        paper.write("[\n")
        for i in range(n):
            path = paths[rng.randrange(len(paths))]
            image = f"images/{i // 1000:04d}/{i:07d}.jpg"
            record = {"image": image, "label": path[-1], "split": "test"}
            images.write(json.dumps(record, ensure_ascii=False) + "\n")
            levels, item = [], {"image": image, "label": path[-1], "mode": "image"}
            for k, truth in enumerate(path):
                pool = by_level[k]
                options = [truth]
                while len(options) < min(4, len(pool)):
                    c = pool[rng.randrange(len(pool))]
                    if c not in options:
                        options.append(c)
                rng.shuffle(options)
                record[f"level{k + 1}"] = truth
                record[f"choices_level{k + 1}"] = options
                r = rng.random()
                pick = options.index(truth) if r < 0.6 else rng.randrange(len(options))
                parsed = r < 0.97
                if bank_only:
                    continue
                letter = prompts.LETTERS[pick] if parsed else None
                predicted = options[pick] if parsed else None
                reply = letter or "I cannot tell."
                question = prompts.question_text(prompts.image_prompt(0, LEVELS[k], "plant", "inat"), options)
                levels.append({
                    "level": k + 1, "name": LEVELS[k], "truth": truth, "options": options, "reply": reply,
                    "letter": letter, "predicted": predicted, "correct": parsed and predicted == truth,
                    "asked": True, "question": question,
                })  # fmt: skip
                item[f"ground_truth_level{k + 1}"] = truth
                item[f"prediction_level{k + 1}"] = reply
                item[f"predicted_level{k + 1}_letter"] = letter or "Unknown"
                item[f"predicted_level{k + 1}"] = predicted or "Unknown"
                item[f"choices_level{k + 1}"] = dict(zip(prompts.LETTERS, options))
            bank.write(json.dumps(record, ensure_ascii=False) + "\n")
            if bank_only:
                continue
            sample = {"id": i, "image": image, "label": path[-1], "split": "test", "mode": "image", "levels": levels}
            preds.write(json.dumps(sample, ensure_ascii=False) + "\n")
            text = json.dumps(item, indent=4, ensure_ascii=False)
            paper.write(("    " + text.replace("\n", "\n    ")) + (",\n" if i < n - 1 else "\n"))
        paper.write("]")
    if bank_only:
        (folder / ".bank_complete").write_text("ok")
        return {name: folder / name for name in ("bank.jsonl", "images.jsonl", "predictions.jsonl", "results.json")}
    done.write_text("ok")
    return files


def _measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int, str, float]:
    """(wall seconds, peak RSS bytes, exit code, last stderr line, CPU seconds) of one child process."""
    # stderr to a file, not a pipe: a child printing more than a pipe holds (tqdm over 1M
    # records) would block until this process read it, which it does only after wait4
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        log.seek(0)
        err = log.read().decode(errors="replace").replace("\r", "\n").strip().splitlines()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode, (err[-1] if err else ""), usage.ru_utime + usage.ru_stime


_RESUME = r'''
import sys, time
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.runs.eval_outputs import RunDirectory
start = time.perf_counter()  # after the imports (lightning, torch), which every `hiertrain test` pays
dm = HierVQADataModule(sys.argv[2], mode="text", taxonomy=sys.argv[3])
dm.setup("test")
dm.exclude_ids = set(RunDirectory(sys.argv[1]).finished_ids())
left = len(dm.dataset())
print(f"{len(dm.exclude_ids)} finished, {left} left of {len(dm.served_ids())}; skip {time.perf_counter() - start:.2f} s "
      "after the imports", file=sys.stderr)
'''

_TEST_CONFIG = """\
model:
  class_path: hiertrain.modules.vllm_evaluator.VLLMEvaluator
  init_args: {{pretrained: {model}, answer: logits, dtype: float32, run_name: limit10}}
data:
  class_path: hiertrain.datamodules.questions.HierVQADataModule
  init_args: {{questions: {bank}, taxonomy: {taxonomy}, mode: text, limit: 10, batch_size: 10, name: bench}}
trainer: {{accelerator: cpu, devices: 1, enable_progress_bar: false, default_root_dir: {root}}}
wandb: false
"""


def _tiny_model(work: Path, env: dict[str, str]) -> Path:
    """A tiny Qwen2.5-VL (`hiertrain tiny`), built once in the work folder."""
    out = work / "tiny_qwen2_5_vl"
    if not (out / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "hiertrain.cli", "tiny", "--arch", "qwen2_5_vl", "--out", str(out)],
                       env=env, check=True, capture_output=True)  # fmt: skip
    return out


def _test_config(files: dict[str, Path], model: Path) -> Path:
    folder = files["bank.jsonl"].parent
    config = folder / "test_limit.yaml"
    config.write_text(_TEST_CONFIG.format(model=model, bank=files["bank.jsonl"], taxonomy=files["taxonomy.json"],
                                          root=folder / "limit_runs"), encoding="utf-8")  # fmt: skip
    return config


def _commands(files: dict[str, Path], work: Path, paper_script: Path) -> dict[str, list[str]]:
    py = sys.executable
    cli = [py, "-m", "hiertrain.cli"]
    run_dir = files["predictions.jsonl"].parent / "run"
    return {
        "score": [*cli, "score", str(files["predictions.jsonl"]), "--json"],
        "score0": [*cli, "score", str(files["predictions.jsonl"]), "--json", "--bootstrap", "0"],
        "score_tax": [*cli, "score", str(files["predictions.jsonl"]), "--json", "--taxonomy", str(files["taxonomy.json"])],
        "paper": [*cli, "score", str(files["results.json"]), "--protocol", "paper", "--json"],
        "metric_py": [py, str(paper_script), "--file_path", str(files["results.json"])]
        if paper_script.name == "metric.py"
        else [py, str(paper_script), str(files["results.json"])],
        "check": [*cli, "data", "check", "--taxonomy", str(files["taxonomy.json"]), "--questions", str(files["bank.jsonl"])],
        "questions": [
            *cli, "data", "questions", "--taxonomy", str(files["taxonomy.json"]), "--images", str(files["images.jsonl"]),
            "--distractors", "random", "--out", str(work / "questions_out.jsonl"),
        ],  # fmt: skip
        "resume": [py, "-c", _RESUME, str(run_dir), str(files["bank.jsonl"]), str(files["taxonomy.json"])],
        "test_limit": [*cli, "test", "--config", str(files["bank.jsonl"].parent / "test_limit.yaml")],
        "test_limit_cold": [*cli, "test", "--config", str(files["bank.jsonl"].parent / "test_limit.yaml")],
    }


def _prepare(op: str, files: dict[str, Path], env: dict[str, str]) -> dict[str, str]:
    """Before each timed run: an empty run directory for `test`, and the index cached or not."""
    if op.startswith("test_limit"):
        shutil.rmtree(files["bank.jsonl"].parent / "limit_runs", ignore_errors=True)
    if op == "test_limit_cold":
        return {**env, "HIERTRAIN_INDEX_CACHE": "off"}
    if op in ("test_limit", "resume"):  # the index of the bank, built once (not timed)
        subprocess.run([sys.executable, "-c", "import sys; from hiertrain.taxonomy.bank_index import QuestionIndex; "
                        "QuestionIndex.of(sys.argv[1])", str(files["bank.jsonl"])], env=env, check=True)  # fmt: skip
    return env


def _run_dir(files: dict[str, Path]) -> None:
    """A run directory whose predictions.jsonl holds every sample (what a rerun finds)."""
    run = files["predictions.jsonl"].parent / "run"
    run.mkdir(exist_ok=True)
    target = run / "predictions.jsonl"
    if not target.exists():
        os.link(files["predictions.jsonl"], target)


def _paper_script(work: Path, repo: Path | None) -> Path:
    if repo is not None and repo.exists():
        out = work / "metric.py"
        text = subprocess.run(["git", "-C", str(repo), "show", "HEAD:utils/metric.py"], capture_output=True, text=True)
        if text.returncode == 0:
            out.write_text(text.stdout, encoding="utf-8")
            return out
    out = work / "paper_rule.py"
    out.write_text(_PAPER_RULE, encoding="utf-8")
    return out


def _uptime() -> str:
    """The 1, 5 and 15 minute load averages (what `uptime` prints)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--work", type=Path, default=None, help="folder for the synthetic files (kept; default a temp dir)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"operations, comma-separated: {', '.join(OPS)}")
    parser.add_argument("--repeats", type=int, default=1, help="run each operation this many times (min - max)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--paper-repo", type=Path, default=PAPER_REPO, help="bare git dir of the paper's repository")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="scale_"))
    work.mkdir(parents=True, exist_ok=True)
    paper_script = _paper_script(work, args.paper_repo)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("HIERTRAIN_INDEX_CACHE", str(work / "index_cache"))
    ops = [op for op in args.ops.split(",") if op]
    bank_only = set(ops) <= BANK_OPS
    model = _tiny_model(work, env) if any(op.startswith("test_limit") for op in ops) else None
    print(f"load average before: {_uptime()}; paper's script: {paper_script.name}; work: {work}")
    figures: dict[str, dict[str, list[tuple[float, int, int]]]] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        files = write_files(n, work / f"n{n}", bank_only=bank_only)
        files["taxonomy.json"] = work / f"n{n}" / "taxonomy.json"
        if model is not None:
            _test_config(files, model)
        sizes = ", ".join(f"{name} {files[name].stat().st_size / 1e9:.2f} GB" for name in ("bank.jsonl", "predictions.jsonl", "results.json")
                          if files[name].is_file())  # fmt: skip
        if not bank_only:
            _run_dir(files)
        print(f"\n{n} records (files ready in {time.perf_counter() - t0:.1f} s; {sizes})")
        commands = _commands(files, work / f"n{n}", paper_script)
        figures[str(n)] = {}
        print(f"  load average: {_uptime()}")
        for op in ops:
            runs = []
            for _ in range(args.repeats):
                wall, rss, rc, last, cpu = _measure(commands[op], _prepare(op, files, env))
                runs.append((wall, rss, rc, cpu))
                if rc != 0:
                    print(f"  {op}: exit {rc}: {last}")
                elif op == "resume":
                    print(f"  resume: {last}")
            figures[str(n)][op] = runs
        paper_runs = figures[str(n)].get("metric_py", [(float("nan"), 0, 0, float("nan"))])
        base, base_cpu = min(r[0] for r in paper_runs), min(r[3] for r in paper_runs)
        print(f"  {'operation':<10} {'wall s':>15} {'peak RSS MB':>17} {'vs metric.py':>13} {'CPU s':>8} {'CPU vs':>7}")
        for op, runs in figures[str(n)].items():
            walls, rsss, cpus = [r[0] for r in runs], [r[1] / 1e6 for r in runs], [r[3] for r in runs]
            wall_s = f"{min(walls):.2f}" + (f"-{max(walls):.2f}" if len(walls) > 1 else "")
            rss_s = f"{min(rsss):.0f}" + (f"-{max(rsss):.0f}" if len(rsss) > 1 else "")
            print(f"  {op:<10} {wall_s:>15} {rss_s:>17} {base / min(walls):>12.2f}x {min(cpus):>8.2f} {base_cpu / min(cpus):>6.2f}x")
    print(f"\nload average after: {_uptime()}")
    try:
        import msgspec

        print(f"msgspec {msgspec.__version__} (hiertrain.metrics.columnar's fast decoder)")
    except ImportError:
        print("msgspec not installed: hiertrain.metrics.columnar decodes with the standard library")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
