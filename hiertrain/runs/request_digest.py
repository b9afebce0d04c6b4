"""A digest of the exact request one sample is asked, stored on its predictions line.

A run's identity (run.json, `hiertrain.runs.meta`) covers what is the same for every sample;
the per-sample digest covers what one sample's answer was computed from: the text(s) the
backend renders for it (the chat text after the processor's template, system turn included,
for Hugging Face models; the message list for the served backend; the prompt texts for CLIP),
the option order of each asked level, the image file's bytes (SHA-256), the generation
settings, and the weights fingerprint + backend. A resumed run reuses a finished sample only
when its stored digest equals the digest of the request it would be asked now; otherwise the
sample is asked again and its new line replaces the old one. Lines written before the digest
existed carry none and are reused when the run-level identity matches, as before.

Deterministic by construction: SHA-256 of canonical JSON (`request_cache.request_key`: sorted
keys, no spaces), never Python's `hash()`, and no absolute path: an image moved to another root
with identical bytes keeps its digest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from hiertrain.runs.request_cache import request_key

# path -> ((size, mtime_ns), sha256): a sample's image is hashed once per run, rehashed if rewritten.
_IMAGE_SHA: dict[str, tuple[tuple[int, int], str]] = {}


def image_sha256(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of an image file's bytes (cached per path, keyed by size and mtime); None for no image."""
    if path is None:
        return None
    key = os.fspath(path)
    stat = os.stat(key)
    version = (stat.st_size, stat.st_mtime_ns)
    cached = _IMAGE_SHA.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = hashlib.sha256()
    with open(key, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    _IMAGE_SHA[key] = (version, digest.hexdigest())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """`value` as JSON-able data: a placeholder for non-JSON objects (a PIL image in a chat
    message), never their repr (which holds a memory address), so the digest is deterministic."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return value.name
    return f"<{type(value).__name__}>"


def request_digest(
    *,
    backend: str,
    model: str | None,
    texts: Any,
    options: list[list[str]],
    image: str | None,
    generation: dict[str, Any],
) -> str:
    """SHA-256 of one sample's request. `texts`: what the backend renders (chat texts, message
    lists or prompt texts); `options`: each asked level's options in the order shown; `image`:
    the image bytes' `image_sha256`; `generation`: the settings that turn the request into an
    answer; `model`: the weights fingerprint (or hub id); `backend`: how the model runs."""
    return request_key({
        "backend": backend, "model": model, "texts": _plain(texts), "options": [list(o) for o in options],
        "image": image, "generation": _plain(generation),
    })  # fmt: skip
