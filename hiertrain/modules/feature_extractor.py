"""FeatureExtractor: one forward per batch, hooks pool every probing site on the fly.

Sites (image mode): ``vision`` (vision-encoder output tokens, the projector's input),
``projector`` (its output, the visual tokens the LLM reads) and ``llm.0..llm.N`` (the LLM's
hidden states at the visual-token positions: ``llm.0`` = input embeddings, ``llm.k`` = after
block k, the last one after the final norm as in transformers' ``hidden_states``). Which
tensor ``vision`` and ``projector`` are, and their token order, is the model family's
(`hiertrain.vlm.family`: Qwen2.5-VL, LLaVA-OneVision, InternVL-hf; see their class docstrings). Text mode
has the ``llm.*`` sites only, pooled over every token of the chat-formatted prompt (as the
paper's text probing does). Each site is pooled right inside its hook (``avg`` and/or
``last``), so no [batch, tokens, dim] tensor outlives its layer.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from hiertrain.protocol.prompts import PROBE_IMAGE_PROMPT as IMAGE_PROMPT
from hiertrain.protocol.prompts import PROBE_IMAGE_SYSTEM as IMAGE_SYSTEM
from hiertrain.protocol.prompts import probe_image_messages as image_messages
from hiertrain.protocol.prompts import probe_text_messages as text_messages
from hiertrain.base.errors import HierError

POOLS = ("avg", "last")


def pool_tokens(h: Tensor, mask: Tensor, pools: tuple[str, ...]) -> dict[str, Tensor]:
    """Masked mean and last masked token of ``h [B, T, D]`` (float32); rows without a token are 0."""
    mask = mask.to(h.device)
    out: dict[str, Tensor] = {}
    if "avg" in pools:
        m = mask.to(torch.float32).unsqueeze(-1)
        out["avg"] = (h.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
    if "last" in pools:
        pos = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, pos, -1).amax(1)
        rows = h[torch.arange(h.shape[0], device=h.device), last.clamp(min=0)].float()
        out["last"] = rows * (last >= 0).unsqueeze(-1)
    return out


def pool_segments(x: Tensor, counts: list[int], pools: tuple[str, ...]) -> dict[str, Tensor]:
    """Mean and last row of each consecutive segment of ``x [sum(counts), D]`` (one per image)."""
    parts = torch.split(x.float(), counts)
    out: dict[str, Tensor] = {}
    if "avg" in pools:
        out["avg"] = torch.stack([p.mean(0) for p in parts])
    if "last" in pools:
        out["last"] = torch.stack([p[-1] for p in parts])
    return out


class _Recorder:
    """Forward hooks that pool each site as soon as it is computed."""

    def __init__(self, pools: tuple[str, ...]) -> None:
        self.pools = pools
        self.pooled: dict[str, dict[str, Tensor]] = {}
        self.handles: list[Any] = []
        self.token_mask: Tensor | None = None

    def llm_site(self, name: str, h: Tensor) -> None:
        assert self.token_mask is not None
        self.pooled[name] = pool_tokens(h, self.token_mask, self.pools)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def _hidden(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class FeatureExtractor(LightningModule):
    """Frozen vision LLM whose `predict_step` returns pooled per-site features per sample.

    Pair it with `hiertrain.callbacks.feature_writer.FeatureWriter` (writes the shards) and
    `hiertrain.datamodules.probe_inputs.ProbeInputDataModule` (images or taxonomy text).
    """

    def __init__(
        self,
        pretrained: str,
        mode: Literal["image", "text"] = "image",
        pools: list[str] | None = None,
        llm_layers: list[int] | None = None,
        dtype: str = "float32",
        attn_implementation: str | None = "sdpa",
        image_prompt: str = IMAGE_PROMPT,
        image_system: str = IMAGE_SYSTEM,
    ) -> None:
        super().__init__()
        from hiertrain.vlm.family import family_of
        from hiertrain.vlm.loading import load_vllm

        self.save_hyperparameters()
        self.mode = mode
        self.pools = tuple(pools or POOLS)
        bad = [p for p in self.pools if p not in POOLS]
        if bad or mode not in ("image", "text"):
            raise HierError(f"FeatureExtractor: pools must be among {POOLS} and mode image|text (got {self.pools}, {mode!r})")
        self.vllm, self.processor = load_vllm(pretrained, dtype=dtype, attn_implementation=attn_implementation)
        self.vllm.requires_grad_(False)
        self.family = family_of(self.vllm)
        self.language_model = self.family.language_model(self.vllm)
        n_layers = len(self.language_model.layers)
        self.llm_layers = list(range(n_layers + 1)) if llm_layers is None else sorted(set(llm_layers))
        if any(not 0 <= k <= n_layers for k in self.llm_layers):
            raise HierError(f"{pretrained}: llm_layers must be in 0..{n_layers} (0 = embeddings); got {llm_layers}")
        hidden = self.language_model.config.hidden_size
        self.sites = [f"llm.{k}" for k in self.llm_layers]
        self.dims = [hidden] * len(self.sites)
        self.image_prompt, self.image_system = image_prompt, image_system
        if mode == "image":
            try:
                vision_dim, projector_dim = self.family.image_site_dims(self.vllm)
            except HierError as err:
                raise HierError(f"{pretrained}: {err}") from err
            self.sites = ["vision", "projector", *self.sites]
            self.dims = [vision_dim, projector_dim, *self.dims]

    # ---- store description ---------------------------------------------------------------------

    def store_fields(self) -> dict[str, Any]:
        """The model half of the store layout and identity (the data module supplies levels and
        the text prompts): the weights fingerprint makes a rebuilt model at the same path
        another store; image mode names the prompt and system text the images were shown with."""
        from hiertrain.runs.meta import weights_fingerprint

        fields = {
            "mode": self.mode,
            "sites": list(self.sites),
            "dims": list(self.dims),
            "pools": list(self.pools),
            "model": str(self.hparams.pretrained),
            "weights": weights_fingerprint(self.hparams.pretrained),
            "settings": {"dtype": self.hparams.dtype, "attn_implementation": self.hparams.attn_implementation},
        }
        if self.mode == "image":
            fields["prompts"] = [self.image_prompt]
            fields["system"] = self.image_system
        return fields

    # ---- hooks ---------------------------------------------------------------------------------

    def _register_llm(self, rec: _Recorder) -> None:
        layers = self.language_model.layers
        wanted = set(self.llm_layers)
        last = len(layers)

        if 0 in wanted:

            def pre(module, args, kwargs):
                rec.llm_site("llm.0", args[0] if args else kwargs["hidden_states"])

            rec.handles.append(layers[0].register_forward_pre_hook(pre, with_kwargs=True))
        for k in range(1, last):
            if k in wanted:
                rec.handles.append(
                    layers[k - 1].register_forward_hook(lambda m, a, o, name=f"llm.{k}": rec.llm_site(name, _hidden(o)))
                )
        if last in wanted:  # transformers' last hidden state is the normed one
            rec.handles.append(
                self.language_model.norm.register_forward_hook(lambda m, a, o: rec.llm_site(f"llm.{last}", _hidden(o)))
            )

    def _register_vision(self, rec: _Recorder, inputs: dict[str, Tensor]) -> None:
        def emit(site: str, rows: Tensor, counts: list[int]) -> None:
            rec.pooled[site] = pool_segments(rows, counts, rec.pools)

        rec.handles.extend(self.family.image_site_hooks(self.vllm, inputs, emit))

    # ---- forward -------------------------------------------------------------------------------

    def _run(self, inputs: dict[str, Tensor], token_mask: Tensor, image: bool) -> dict[str, dict[str, Tensor]]:
        rec = _Recorder(self.pools)
        rec.token_mask = token_mask
        self._register_llm(rec)
        if image:
            self._register_vision(rec, inputs)
        try:
            # the backbone only: the LM head's logits are not a probing site
            self.vllm.model(**inputs, use_cache=False)
        finally:
            rec.remove()
        missing = [s for s in self.sites if s not in rec.pooled]
        if missing:
            raise HierError(f"{self.hparams.pretrained}: hooks did not fire for sites {missing}")
        return rec.pooled

    def _stack(self, pooled: dict[str, dict[str, Tensor]], n: int, slots: int, where: list[tuple[int, int]]) -> dict[str, Tensor]:
        """Per pool ``[n, slots, sites, max_dim]`` (zero-padded); row j of the forward goes to ``where[j]``."""
        d = max(self.dims)
        out = {p: torch.zeros((n, slots, len(self.sites), d), dtype=torch.float32) for p in self.pools}
        b_idx = torch.tensor([w[0] for w in where])
        s_idx = torch.tensor([w[1] for w in where])
        for si, site in enumerate(self.sites):
            for p in self.pools:
                v = pooled[site][p].detach().cpu()
                out[p][b_idx, s_idx, si, : v.shape[-1]] = v
        return out

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        records, valid = batch["records"], batch["valid"]
        refused: list[str] = []
        if self.mode == "image" and records:
            batch, refused = self._drop_refused(batch)
            records, valid = batch["records"], batch["valid"]
        if not records:  # every image of the batch was unreadable (counted by the writer)
            return {"records": [], "valid": valid, "features": {}, "skipped": refused}
        if self.mode == "image":
            feats = self._image_features(batch["images"])
        else:
            feats = self._text_features(batch["texts"])
        return {"records": records, "valid": valid, "features": feats, "skipped": refused}

    def _drop_refused(self, batch: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The batch without images the processor refuses (Qwen: aspect ratio over 200), and one
        reason per refused real sample, worded like an unreadable image's (the writer counts them)."""
        from hiertrain.vlm.image_check import processor_refusal

        refusals = [processor_refusal(self.processor, image.size) for image in batch["images"]]
        if not any(refusals):
            return batch, []
        paths = batch.get("paths") or [None] * len(refusals)
        reasons = [
            f"{path or rec.get('image')}: cannot read image of sample {rec['id']} for this model ({why})"
            for rec, path, why, ok in zip(batch["records"], paths, refusals, batch["valid"].tolist())
            if why and ok
        ]
        keep = [i for i, why in enumerate(refusals) if not why]
        kept = {**batch, "records": [batch["records"][i] for i in keep], "valid": batch["valid"][keep],
                "images": [batch["images"][i] for i in keep], "paths": [paths[i] for i in keep]}  # fmt: skip
        return kept, reasons

    def _image_features(self, images: list) -> dict[str, Tensor]:
        if not images:
            raise HierError("FeatureExtractor: image mode got a batch without images (is the data module in text mode?)")
        chat = self.processor.apply_chat_template(
            image_messages(self.image_prompt, self.image_system), tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(text=[chat] * len(images), images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.vllm.dtype)
        inputs = dict(inputs)
        pooled = self._run(inputs, self.family.visual_token_mask(self.vllm, inputs), image=True)
        return self._stack(pooled, len(images), 1, [(b, 0) for b in range(len(images))])

    def _text_features(self, texts: list[list[tuple[int, str]]]) -> dict[str, Tensor]:
        where = [(b, int(slot)) for b, items in enumerate(texts) for slot, _ in items]
        if not where:
            raise HierError("FeatureExtractor: text mode got a batch without prompts (is the data module in image mode?)")
        prompts = [text for items in texts for _, text in items]
        tok = self.family.tokenizer(self.processor)
        chats = [tok.apply_chat_template(text_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        inputs = tok(chats, padding=True, return_tensors="pt").to(self.device)
        pooled = self._run(dict(inputs), inputs["attention_mask"].bool(), image=False)
        slots = 1 + max(s for _, s in where)  # the writer pads to the store's slot count
        return self._stack(pooled, len(texts), slots, where)
