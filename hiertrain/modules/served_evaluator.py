"""Served models answering the question bank through an OpenAI-compatible API: `hiertrain test`.

GPT-4o, or any model behind vLLM, SGLang or `transformers serve`: the questions, prompt
families, option shuffling, parsers, metrics, predictions, run directory, resume and W&B are the
in-process evaluator's (`QuestionEvaluator`); only the answering differs. Each asked level is one
chat request: the level's chat messages (`datamodules.questions.level_questions`, texts from
`protocol.prompts`) with the image as a base64 data URL (PNG: the pixels the datamodule loaded;
text mode sends no image). The server applies its own chat template. Every question condition
is served (they only change the text; binary sends one request per statement) and its replies are
read by the same rules as in-process (`QuestionEvaluator.replies_prediction`).

- `answer: generate` (every server): temperature 0, `max_tokens` = `max_new_tokens` (the
  paper's 5); the letter is read with `answers.parse_letter`, as in-process.
- `answer: logprobs` (OpenAI, vLLM, SGLang): one token with its top-20 log-probabilities; the
  highest-scored option letter is the answer, a letter not in the list is unscored; a server
  that returns no logprobs (`transformers serve`) stops the run: use `generate`.

Requests of a batch (`--data.batch_size` images x their levels) are sent concurrently, at most
`max_concurrency` at a time; retries and backoff are the `openai` client's. Every answer is
cached in the run directory (`runs/request_cache.py`), so a resumed run resends nothing already
answered. A sample whose request still fails after the retries is named, recorded in
`skipped.jsonl` (not scored; `num_skipped` in metrics.json) and retried by the next run; a batch
in which no request got through stops the run (the server is gone; rerun to resume).
run.json adds `backend: "served"`, `base_url_host`, `served_model` (the id the server answered
with) and `usage` (requests and token totals of the run).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_warn

from hiertrain.answerers.served import ServedAnswerer, ServedSettings
from hiertrain.protocol import conditions
from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import SamplePrediction
from hiertrain.protocol.prompts import asked_levels
from hiertrain.modules.evaluator_base import QuestionEvaluator
from hiertrain.runs.meta import RunMeta, default_run_name, read_run_json
from hiertrain.runs.request_cache import RequestCache
from hiertrain.vlm.served_client import ServedClient, url_host

BACKEND = "served"


class ServedEvaluator(QuestionEvaluator):
    """Answer each image's levels by asking a model behind an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`.
        model: the model id the server knows (`gpt-4o`, `Qwen/Qwen2.5-VL-72B-Instruct`, ...).
        api_key_env: name of the environment variable holding the key (the key itself is never
            written anywhere); local servers need none (unset -> the placeholder "EMPTY").
        answer: "generate" (the paper's protocol) or "logprobs" (first-token letter scores).
        max_concurrency: requests in flight at once.
        timeout: seconds per request try.
        max_retries: retries per request on 429/5xx/connection errors (the openai client's backoff).
        max_new_tokens: reply length for `generate`.
        image_format: "png" (lossless, default) or "jpeg" (quality 95, smaller uploads).
        progress_bar: show requests done, requests/s, cached and failed requests.
        run_name: run directory name inside `--trainer.default_root_dir`
            (default `<model>-served-<dataset>-<mode>-<answer>-v<variant>`).
    """

    backend = BACKEND
    # Every condition only changes the text (and binary the number of requests): all are served.
    supported_conditions = conditions.REGISTRY  # live: a condition registered later is served too

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        answer: Literal["generate", "logprobs"] = "generate",
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        max_new_tokens: int = 5,
        image_format: Literal["png", "jpeg"] = "png",
        progress_bar: bool = True,
        run_name: str | None = None,
    ) -> None:
        super().__init__(model, run_name)
        if answer not in ("generate", "logprobs"):
            raise HierError(f"answer {answer!r} is not 'generate' or 'logprobs' (served models)")
        if image_format not in ("png", "jpeg"):
            raise HierError(f"image_format {image_format!r} is not 'png' or 'jpeg'")
        if answer == "generate" and max_new_tokens < 1:
            raise HierError(f"model.max_new_tokens must be at least 1 with answer: generate (a reply of {max_new_tokens} tokens holds no letter)")
        self.answer_kind = answer
        self.base_url, self.served_model_id, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.max_concurrency, self.timeout, self.max_retries = max_concurrency, timeout, max_retries
        self.max_new_tokens, self.image_format, self.progress_bar = max_new_tokens, image_format, progress_bar
        self.failed: dict[int, str] = {}  # sample id -> why its requests failed (this run)
        self.cache: RequestCache | None = None
        self._client: ServedClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bar: Any = None

    # ---------------------------------------------------------------- run identity

    def default_run_name(self, meta: RunMeta) -> str:
        """`<model>-served-<dataset>-...`: a served run never lands in an in-process run's directory."""
        return default_run_name(
            f"{meta.model_name}-served", meta.dataset, meta.mode, meta.answer, meta.prompt_variant, meta.fields.get("condition")
        )

    def run_meta(self, dm) -> dict[str, Any]:
        meta = super().run_meta(dm)
        meta["base_url_host"] = url_host(self.base_url)
        old = Path(self.trainer.default_root_dir) / meta["run_name"] / "run.json"
        if old.is_file():
            backend = read_run_json(old).get("backend", "transformers")
            if backend != BACKEND:
                raise HierError(f"{old.parent}: holds a {backend!r} run, not a served one; choose another run_name")
        return meta

    # ---------------------------------------------------------------- setup / teardown

    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.cache = RequestCache(self.run_dir.path, rank=self.global_rank)
        api_key = os.environ.get(self.api_key_env)
        key_source = f"${self.api_key_env}" + ("" if api_key else " (not set)")
        self._loop = asyncio.new_event_loop()
        self._client = ServedClient(
            self.base_url, api_key or "EMPTY", key_source, self.timeout, self.max_retries, self.max_concurrency
        )
        try:
            self._loop.run_until_complete(self._client.check(self.served_model_id))
        except HierError:
            self.teardown(stage)  # no module hook runs on an exception: close the client here
            raise
        dm = self._datamodule()
        todo = [r for r in dm.served_records() if r.sample_id not in dm.exclude_ids]
        binary = self.condition.per_statement  # a request per statement (option) of a level
        total = sum(len(r.choices[i]) if binary else 1 for r in todo for i in asked_levels(r.truths, self.protocol.mode))
        if self.progress_bar and self.global_rank == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"{self._client.host} {self.served_model_id}", unit="req", dynamic_ncols=True)
        settings = ServedSettings(self.served_model_id, self.answer_kind, self.max_new_tokens, self.image_format)
        self.answerer = ServedAnswerer(
            self._client, self._loop, self.cache, self.protocol, settings, self.matcher, self._failed, self._bar
        )

    def teardown(self, stage: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._loop is not None:
            if self._client is not None:
                self._loop.run_until_complete(self._client.close())
            self._loop.close()
        self._loop, self._client = None, None
        super().teardown(stage)  # frees the run directory's lock

    # ---------------------------------------------------------------- answering

    def bodies(self, item: dict[str, Any], url: str | None = None) -> list[dict[str, Any]]:
        """The chat-completions request of each asked level of one item (`ServedAnswerer.bodies`)."""
        return self.answerer.bodies(item, url)

    def _failed(self, item: dict[str, Any], reason: str) -> None:
        """A sample whose requests failed after the retries: named, recorded as skipped, retried next run."""
        self.failed[item["sample_id"]] = reason
        self.run_dir.skip(item["sample_id"], item["record"].image, reason)
        rank_zero_warn(f"sample {item['sample_id']} ({item['record'].image}) not scored: {reason}")

    def answer_items(self, items: list[dict[str, Any]], mode: str) -> list[SamplePrediction]:
        try:
            return self.answerer.answer(items)
        except HierError:
            self.teardown("test")  # Lightning calls no module hook on an exception: close the client here
            raise

    # ---------------------------------------------------------------- end of run

    def on_test_epoch_end(self) -> None:
        if self._bar is not None:  # done before the summary table is printed
            self._bar.close()
            self._bar = None
        super().on_test_epoch_end()
        if self.global_rank != 0:
            return
        cache = RequestCache(self.run_dir.path)  # every rank's answers
        models = cache.served_models()
        self.run_dir.update_meta(
            served_model=models[0] if len(models) == 1 else models, usage=cache.usage()
        )
        if self.failed:
            ids = sorted(self.failed)
            shown = ", ".join(map(str, ids[:20])) + (", ..." if len(ids) > 20 else "")
            rank_zero_warn(
                f"{len(ids)} samples not scored, their requests failed after {self.max_retries} retries "
                f"(ids {shown}; reasons in {self.run_dir.path / 'skipped.jsonl'}); rerun the same command to retry only those"
            )
