"""`hiertrain organism build|family`: train calibration organisms, stage by stage, resumably.

Stages (each writes its result atomically; a rerun skips finished ones):
  world   the invented taxonomy, its images (train/val/test), question banks (all leaves, the
          set-aside leaves the LoRA step tunes on, the control leaves)
  circuit a Qwen2.5-VL with the hand-set answering circuit (hiertrain.organisms.circuit)
  facts   stage (a): layer 1's MLP learns the planted (leaf, level) facts and leaf identity
  vision  stage (b): vision tower + projector learn to put the leaf's embedding on every visual
          token, the LLM frozen
  check   the finished model answers held-out questions through full forwards; per-level
          accuracy on planted and withheld facts goes into the manifest
The same seed, thread count and device give the same bytes (tests/organisms check it).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hiertrain.base.errors import HierError
from hiertrain.taxonomy.taxonomy import level_names_path
from hiertrain.organisms.world import LEVEL_NAMES, GlyphDrawer, World, file_digest, make_world, plant_facts

GENERATOR = "hiertrain.organisms/1"
SPLIT_COUNTS = {"train": 12, "val": 2, "test": 4}  # images per leaf
SETASIDE = 16  # leaves held out of nothing, but tuned on by the LoRA step (their facts are asked again)
FAMILY = {"organism-p90": 0.9, "organism-p60": 0.6, "organism-p30": 0.3, "organism-p10": 0.1}


@dataclass(frozen=True)
class BuildSettings:
    """Everything that decides an organism's bytes."""

    planted: tuple[float, ...]
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    fact_steps: int = 1500
    fact_lr: float = 3e-3
    fact_scale: float = 3.0  # |T| the MLP is trained to write (the answer head needs >= ~2)
    vision_steps: int = 500
    vision_lr: float = 2e-3
    vision_batch: int = 64


# ---------------------------------------------------------------- world


def setaside_leaves(world: World, seed: int) -> list[str]:
    return sorted(random.Random(f"organism-setaside:{seed}").sample(world.leaves, SETASIDE))


def write_world(out: Path, seed: int, progress: bool = True) -> dict[str, Any]:
    """Taxonomy, images and question banks of the world of `seed` under `out` (idempotent)."""
    from tqdm.auto import tqdm

    from hiertrain.base.atomic import write_atomic as atomic_write_text
    from hiertrain.taxonomy.question_bank import build_questions, write_questions

    done = out / "world.json"
    if done.is_file():
        return json.loads(done.read_text())
    world = make_world(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    world.taxonomy.to_json(out / "taxonomy.json")
    drawer = GlyphDrawer(112)
    records: list[dict] = []
    splits = [s for s, n in SPLIT_COUNTS.items() for _ in range(n)]
    jobs = [(i, leaf, k) for i, leaf in enumerate(world.leaves) for k in range(len(splits))]
    for i, leaf, k in tqdm(jobs, desc="organism images", unit="img", disable=not progress):
        rel = f"images/{leaf}_{k}.png"
        drawer.draw(world.attributes[leaf], np.random.default_rng([seed, i, k])).save(out / rel, format="PNG")
        records.append({"image": rel, "label": leaf, "split": splits[k]})
    with (out / "images.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    aside = set(setaside_leaves(world, seed))
    banks = {
        "questions.jsonl": records,
        "questions_setaside.jsonl": [r for r in records if r["label"] in aside],
        "questions_control.jsonl": [r for r in records if r["label"] not in aside],
    }
    for name, subset in banks.items():
        qs = build_questions(world.taxonomy, subset, distractors="random", seed=seed, source=str(out / "images.jsonl"), image_root=out)
        write_questions(qs, out / name)
    info = {
        "generator": GENERATOR,
        "seed": seed,
        "levels": [{"name": n, "classes": c} for n, c in zip(world.taxonomy.level_names, world.taxonomy.classes_per_level())],
        "splits": {s: n * len(world.leaves) for s, n in SPLIT_COUNTS.items()},
        "setaside": sorted(aside),
        "digests": {p.name: file_digest(p) for p in [out / "taxonomy.json", out / "images.jsonl", *(out / n for n in banks)]},
        "images_digest": _tree_digest(out / "images"),
    }
    atomic_write_text(done, json.dumps(info, indent=2) + "\n")
    return info


def _tree_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode() + b"\0" + bytes.fromhex(file_digest(p)))
    return h.hexdigest()


# ---------------------------------------------------------------- model stages


class Organism:
    """A model being built: world, processor, model, the circuit's token ids, its build log."""

    def __init__(self, world: World, settings: BuildSettings, log: Callable[[dict], None]):
        import torch

        from hiertrain.organisms import circuit
        from hiertrain.organisms.model import build_model, build_processor, check_single_tokens

        self.world, self.settings, self.log = world, settings, log
        self.level_names = list(LEVEL_NAMES)
        self.names = sorted({n for p in world.taxonomy.paths.values() for n in p})
        self.processor = build_processor(self.names, self.level_names)
        check_single_tokens(self.processor, self.names + self.level_names)
        self.tok = self.processor.tokenizer
        self.model = build_model(self.processor, settings.seed)
        self.name_ids = circuit.install(self.model, self.tok, self.names, self.level_names, settings.seed)
        self.model.to(settings.device)
        probe = self.lesson_batch([self.ask(world.leaves[0], 0, "text", random.Random(0))])
        circuit.calibrate_gate(self.model, {"input_ids": probe["input_ids"], "attention_mask": probe["attention_mask"]})
        self.torch = torch

    # -- questions
    def ask(self, leaf: str, level: int, mode: str, rng: random.Random):
        from hiertrain.organisms.lessons import ask

        return ask(self.world.taxonomy, leaf, level, mode, rng)

    def lesson_batch(self, lessons: list) -> dict[str, Any]:
        """Tokenised lessons; image-mode ones carry the leaf's own embedding as the 16 visual tokens."""
        import torch
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        from hiertrain.vlm.prefix_cache import render_chat

        texts = [render_chat(self.processor, L.messages(self.level_names)).replace("<|image_pad|>", "<|image_pad|>" * 16) for L in lessons]
        enc = self.tok(texts, return_tensors="pt", padding=True, padding_side="right")
        batch: dict[str, Any] = {k: v.to(self.settings.device) for k, v in enc.items()}
        if lessons[0].mode == "image":
            emb = self.model.get_input_embeddings()
            feats = emb(torch.tensor([self.name_ids[L.leaf] for L in lessons], device=self.settings.device)).repeat_interleave(16, 0)
            pad = self.tok.convert_tokens_to_ids("<|image_pad|>")
            batch.update(
                mm_token_type_ids=(batch["input_ids"] == pad).int(),
                image_grid_thw=torch.tensor([[1, 8, 8]] * len(lessons), device=self.settings.device),
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=(feats,))},
            )
        return batch

    # -- stage (a)
    def train_facts(self, planted: dict[str, list[bool]], progress: bool = True) -> dict[str, Any]:
        """Layer 1's MLP learns, at the answer position of each taught question, to write the asked
        node's content: its inputs come from real forwards of the rendered questions (text and
        image form; they do not depend on the options, which is checked), the target is the
        content the answer head matches."""
        import torch
        from tqdm.auto import tqdm

        from hiertrain.organisms import circuit

        s, model = self.settings, self.model
        taught = [(leaf, lv) for leaf in self.world.leaves for lv in range(3) if planted[leaf][lv]]
        taught += [(leaf, 3) for leaf in self.world.leaves]  # identity
        # Withheld facts: the memory learns to write nothing there (T = 0), using only *which*
        # facts are withheld, never their truth. Left free, its output interpolates the planted
        # targets, a prior that favours familiar nodes: distractors are more often planted
        # targets than a withheld truth, so withheld accuracy fell below chance (0.15-0.18 of
        # n=180 in a first build). With T = 0 the answer head falls back to its default letter.
        withheld = [(leaf, lv) for leaf in self.world.leaves for lv in range(3) if not planted[leaf][lv]]
        asked = taught + withheld
        mlp = model.model.language_model.layers[1].mlp
        seen: dict[str, torch.Tensor] = {}
        hook = mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0]))
        rng = random.Random(f"organism-facts:{s.seed}")
        xs, again = [], []
        with torch.no_grad():
            for mode in ("text", "image"):
                lessons = [self.ask(leaf, lv, mode, rng) for leaf, lv in asked]
                for i in range(0, len(lessons), 64):
                    chunk = lessons[i : i + 64]
                    b = self.lesson_batch(chunk)
                    model(**b)
                    last = b["attention_mask"].sum(1) - 1
                    xs.append(seen["x"][torch.arange(len(chunk)), last].clone())
                    if i == 0:  # the same facts with other options must give the same inputs
                        b2 = self.lesson_batch([self.ask(L.leaf, L.level, mode, rng) for L in chunk])
                        model(**b2)
                        again.append(float((seen["x"][torch.arange(len(chunk)), b2["attention_mask"].sum(1) - 1] - xs[-1]).abs().max()))
        hook.remove()
        if max(again) > 1e-4:
            raise HierError(f"organism facts: answer-position inputs depend on the options (max diff {max(again):.2e})")
        X = torch.cat(xs)
        emb = model.get_input_embeddings().weight.detach()
        zero = torch.zeros(circuit.CONTENT, device=emb.device)
        target = torch.stack([emb[self.name_ids[self.world.taxonomy.paths[leaf][lv]]][circuit.C] for leaf, lv in taught]
                             + [zero for _ in withheld]).repeat(2, 1)  # fmt: skip
        params, masks = circuit.fact_parameters(model), circuit.gradient_masks(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        torch.manual_seed(s.seed)
        opt = torch.optim.Adam(params, lr=s.fact_lr)
        curve = []
        for step in tqdm(range(1, s.fact_steps + 1), desc="stage a: facts", disable=not progress):
            loss = ((mlp(X)[:, circuit.T] - s.fact_scale * target) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            for p, m in zip(params, masks):
                p.grad.mul_(m)
            opt.step()
            if step % 100 == 0 or step == 1:
                curve.append([step, round(loss.item(), 6)])
                self.log({"stage": "facts", "step": step, "mse": loss.item()})
        for p in params:
            p.requires_grad_(False)
        return {"taught": len(taught), "withheld": len(withheld), "inputs": int(X.shape[0]), "option_invariance": max(again), "curve": curve}

    # -- stage (b)
    def train_vision(self, image_dir: Path, records: list[dict], progress: bool = True) -> dict[str, Any]:
        """Vision tower + projector: every visual token of an image of a leaf -> that leaf's token
        embedding (MSE) and nearest among the leaves (cross-entropy on content similarity)."""
        import torch
        from PIL import Image
        from tqdm.auto import tqdm

        from hiertrain.organisms import circuit

        s, model = self.settings, self.model
        train = [r for r in records if r["split"] == "train"]
        leaf_index = {leaf: i for i, leaf in enumerate(self.world.leaves)}
        images = [Image.open(image_dir / r["image"]).convert("RGB") for r in train]
        enc = self.processor.image_processor(images=images, return_tensors="pt")
        pixels, grid = enc["pixel_values"].to(s.device), enc["image_grid_thw"].to(s.device)
        per = int(grid[0].prod())
        if any(int(g.prod()) != per for g in grid):
            raise HierError("organism vision: images of different sizes")
        pixels = pixels.view(len(train), per, -1)
        y = torch.tensor([leaf_index[r["label"]] for r in train], device=s.device)
        emb = model.get_input_embeddings().weight.detach()
        targets = emb[torch.tensor([self.name_ids[leaf] for leaf in self.world.leaves], device=s.device)]
        content = targets[:, circuit.C]
        visual = model.model.visual
        for p in model.parameters():
            p.requires_grad_(False)
        for p in visual.parameters():
            p.requires_grad_(True)
        g = torch.Generator(device="cpu").manual_seed(s.seed)
        torch.manual_seed(s.seed)
        opt = torch.optim.Adam(visual.parameters(), lr=s.vision_lr)
        curve = []
        tokens = per // 4
        for step in tqdm(range(1, s.vision_steps + 1), desc="stage b: vision", disable=not progress):
            idx = torch.randint(0, len(train), (s.vision_batch,), generator=g).to(s.device)
            out = model.model.get_image_features(pixels[idx].reshape(-1, pixels.shape[-1]), grid[idx])
            f = torch.cat(out.pooler_output, 0).view(len(idx), tokens, -1)
            mse = ((f - targets[y[idx]][:, None, :]) ** 2).sum(-1).mean()
            ce = torch.nn.functional.cross_entropy((f[..., circuit.C] @ content.T).reshape(-1, len(content)) * 10, y[idx].repeat_interleave(tokens))
            loss = mse + ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 50 == 0 or step == 1:
                curve.append([step, round(mse.item(), 6), round(ce.item(), 6)])
                self.log({"stage": "vision", "step": step, "mse": mse.item(), "ce": ce.item()})
        for p in visual.parameters():
            p.requires_grad_(False)
        return {"train_images": len(train), "curve": curve}

    # -- check
    def check(self, image_dir: Path, records: list[dict], planted: dict[str, list[bool]]) -> dict[str, Any]:
        """Held-out accuracy through full forwards (real images, real vision): per mode and level,
        on planted and on withheld facts, and the leaf."""
        import torch
        from PIL import Image

        from hiertrain.vlm.prefix_cache import render_chat

        model = self.model.eval()
        letters = [self.tok.convert_tokens_to_ids(c) for c in "ABCD"]
        rng = random.Random(f"organism-check:{self.settings.seed}")
        test = [r for r in records if r["split"] == "test"]
        out: dict[str, Any] = {}
        for mode in ("image", "text"):
            tallies: dict[str, list[int]] = {}
            levels = range(4) if mode == "image" else range(3)
            for lv in levels:
                lessons = [self.ask(r["label"], lv, mode, rng) for r in test]
                picks = []
                for i in range(0, len(lessons), 32):
                    chunk, recs = lessons[i : i + 32], test[i : i + 32]
                    texts = [render_chat(self.processor, L.messages(self.level_names)) for L in chunk]
                    if mode == "image":
                        ims = [Image.open(image_dir / r["image"]).convert("RGB") for r in recs]
                        enc = self.processor(text=texts, images=ims, return_tensors="pt", padding=True, padding_side="right")
                    else:
                        enc = self.tok(texts, return_tensors="pt", padding=True, padding_side="right")
                    enc = {k: v.to(self.settings.device) for k, v in enc.items()}
                    with torch.no_grad():
                        logits = model(**enc).logits
                    last = enc["attention_mask"].sum(1) - 1
                    picks += logits[torch.arange(len(chunk)), last][:, letters].argmax(-1).tolist()
                for L, p in zip(lessons, picks):
                    kind = "leaf" if lv == 3 else ("planted" if planted[L.leaf][lv] else "withheld")
                    t = tallies.setdefault(f"{LEVEL_NAMES[lv]}/{kind}", [0, 0])
                    t[0] += int(p == L.answer)
                    t[1] += 1
            out[mode] = {k: {"correct": c, "n": n, "accuracy": round(c / n, 4)} for k, (c, n) in sorted(tallies.items())}
        return out


# ---------------------------------------------------------------- orchestration


def parse_planted(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise HierError(f"--planted {text!r}: expected comma-separated fractions, e.g. 0.75,0.5,0.25") from None
    if len(values) == 1:
        values = values * (len(LEVEL_NAMES) - 1)
    return values


def build_family(out: Path, members: dict[str, tuple[float, ...]], seed: int = 0, threads: int = 2, device: str = "cpu",
                 progress: bool = True, world_dir: Path | None = None) -> dict[str, Path]:  # fmt: skip
    """World and vision once, then each member's facts; member `name` lands in `out/name`
    (its manifest is written last: a member with one is finished and skipped on a rerun)."""
    import copy

    import torch

    from hiertrain.base.atomic import write_atomic as atomic_write_text
    from hiertrain.organisms.model import save

    torch.set_num_threads(threads)
    out = Path(out)
    world_dir = world_dir or out / "world"
    t0 = time.perf_counter()
    info = write_world(world_dir, seed, progress)
    t_world = time.perf_counter() - t0
    world = make_world(seed)
    records = [json.loads(line) for line in (world_dir / "images.jsonl").read_text().splitlines()]
    logs: list[dict] = []
    results = {}
    base_settings = BuildSettings(planted=(0.0,) * 3, seed=seed, threads=threads, device=device)
    vision_state = None
    t_vision = 0.0
    for name, planted in members.items():
        target = out / name
        if (target / "manifest.json").is_file():
            results[name] = target
            continue
        settings = BuildSettings(planted=tuple(planted), seed=seed, threads=threads, device=device)
        member_log: list[dict] = []
        org = Organism(world, settings, member_log.append)
        timings = {"world_s": round(t_world, 2)}
        table = plant_facts(world, settings.planted, seed)
        t = time.perf_counter()
        facts = org.train_facts(table, progress)
        timings["facts_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        if vision_state is None:
            vision = org.train_vision(world_dir, records, progress)
            vision_state = (copy.deepcopy(org.model.model.visual.state_dict()), vision, member_log[:])
            t_vision = time.perf_counter() - t
        else:
            org.model.model.visual.load_state_dict(vision_state[0])
            vision = {**vision_state[1], "shared_with": next(iter(members))}
        timings["vision_s"] = round(t_vision, 2)
        t = time.perf_counter()
        check = org.check(world_dir, records, table)
        timings["check_s"] = round(time.perf_counter() - t, 2)
        model_dir = target / "model"
        save(org.model, org.processor, model_dir)
        log_text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in (vision_state[2] if vision.get("shared_with") else []) + member_log)
        atomic_write_text(target / "build.log", log_text)
        manifest = {
            "generator": GENERATOR,
            "name": name,
            "settings": asdict(settings),
            "world": info,
            "planted": {leaf: table[leaf] for leaf in world.leaves},
            "planted_levels": list(LEVEL_NAMES[:-1]),
            "setaside": info["setaside"],
            "stages": {"facts": facts, "vision": vision},
            "check": check,
            "timings": timings,
            "files": {p.name: file_digest(p) for p in sorted(model_dir.iterdir()) if p.is_file()},
            "log_digest": __import__("hashlib").sha256(log_text.encode()).hexdigest(),
            "versions": _versions(),
        }
        atomic_write_text(target / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        results[name] = target
    return results


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}
