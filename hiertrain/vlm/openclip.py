"""Load an open_clip model by name, `name:tag`, `hf-hub:` id or local dir (e.g. a tiny one).

The CLIP baseline and the CLIP-based distractor builder both need (model, preprocess,
tokenizer); open_clip spreads these over three calls and several naming schemes, this gathers
them into one so a tiny local checkpoint and `ViT-L-14:openai` load the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiertrain.base.errors import HierError

if TYPE_CHECKING:
    import torch
    from PIL import Image

SCHEMAS = ("hf-hub:", "local-dir:")


def load_open_clip(name_or_path: str, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model in eval mode, eval preprocess, tokenizer).

    Accepted: a directory holding open_clip_config.json + weights (the hf-hub layout, as
    written by `hiertrain tiny --arch clip`), `local-dir:DIR`, `hf-hub:org/repo`,
    `ARCH:TAG` (`ViT-L-14:openai`) or a bare built-in `ARCH`, which takes open_clip's first
    listed pretrained tag for it, so a bare name never silently means random weights.
    """
    import open_clip

    model_name, pretrained = _resolve(name_or_path, open_clip)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    except (OSError, RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HierError(f"{name_or_path}: cannot load open_clip model ({reason})") from err
    return model.eval(), preprocess, tokenizer


def _resolve(name_or_path: str, open_clip) -> tuple[str, str | None]:
    """open_clip's (model_name, pretrained) for one of the accepted spellings."""
    if name_or_path.startswith(SCHEMAS):
        if name_or_path.startswith("local-dir:"):
            _check_dir(Path(name_or_path.removeprefix("local-dir:")), name_or_path)
        return name_or_path, None
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        _check_dir(path, name_or_path)
        return f"local-dir:{path.resolve()}", None
    arch, _, tag = name_or_path.partition(":")
    if arch not in open_clip.list_models():
        raise HierError(f"{name_or_path}: not a directory and not an open_clip model name")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag and tag not in tags:
        raise HierError(f"{name_or_path}: unknown pretrained tag '{tag}' for {arch} (known: {', '.join(tags)})")
    if not tag and not tags:
        raise HierError(f"{name_or_path}: open_clip has no pretrained weights for {arch}; give ARCH:TAG or a dir")
    return arch, tag or tags[0]


def _check_dir(path: Path, given: str) -> None:
    if not (path / "open_clip_config.json").is_file():
        raise HierError(f"{given}: not an open_clip model directory (no open_clip_config.json)")


def _model_key(name_or_path: str) -> str:
    """Identity of a model for the disk cache: the name, or a local dir and its files' mtimes."""
    path = Path(name_or_path)
    if not path.is_dir():
        return name_or_path
    stamp = max((p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()), default=0)
    return f"{path.resolve()}@{stamp}"


class OpenClipEncoder:
    """An open_clip model (name or local dir, via `load_open_clip`) on the best device."""

    def __init__(self, name_or_path: str, batch_size: int = 64, device: str | None = None):
        import torch

        self.model, self.preprocess, self.tokenizer = load_open_clip(name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.model_key = _model_key(name_or_path)

    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        import torch

        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device)
        with torch.inference_mode():
            return self.model.encode_image(pixels, normalize=True).float().cpu()

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        import torch
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="text embeddings", unit="batch", disable=len(starts) < 2):
            tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode():
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out)
