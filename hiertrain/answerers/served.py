"""`ServedAnswerer`: a model behind an OpenAI-compatible server (GPT-4o, vLLM, SGLang, `transformers serve`).

Each prompt is one chat-completions request: the prompt's chat messages with the image as a
data URL (text mode sends none); the server applies its own chat template. Requests of a batch
go out concurrently (the client bounds how many are in flight); every answer is cached in the
run directory (`hiertrain.runs.request_cache`), and the same request twice in a batch is sent
once. `generate` reads replies as the in-process backend does; `logprobs` scores the option
letters from the first token's top log-probabilities (`pick`). An item whose requests still fail
after the client's retries is handed to `on_failure` and left out; a batch in which no request
got through stops the run (the server is gone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hiertrain.answerers.base import Answerer, Item
from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import SamplePrediction
from hiertrain.protocol.prompts import LETTERS
from hiertrain.protocol.protocol import QuestionProtocol
from hiertrain.runs.request_cache import RequestCache, request_key
from hiertrain.vlm.served_client import (
    RequestFailed,
    ServedClient,
    best_letter,
    image_data_url,
    letter_scores,
    openai_messages,
    reply_text,
    request_body,
)


@dataclass(frozen=True)
class ServedSettings:
    """What a served answer depends on beyond the question protocol."""

    model: str  # the id the server knows
    answer: str = "generate"  # "generate" | "logprobs"
    max_new_tokens: int = 5
    image_format: str = "png"  # how the image is encoded in its data URL


class ServedAnswerer(Answerer):
    """Ask `client` (on the event loop `loop`) under `protocol`; answers cached in `cache`."""

    backend = "served"
    generates = ("generate",)

    def __init__(
        self, client: ServedClient, loop: asyncio.AbstractEventLoop, cache: RequestCache, protocol: QuestionProtocol,
        settings: ServedSettings, matcher: Any = None, on_failure: Callable[[Item, str], None] | None = None,
        progress: Any = None,
    ) -> None:  # fmt: skip
        super().__init__(protocol, settings.answer, "strict", matcher)
        self.client, self.loop, self.cache, self.settings = client, loop, cache, settings
        self.on_failure, self.progress = on_failure, progress
        self.sent = self.errors = self.cached = 0

    # ---------------------------------------------------------------- requests

    def bodies(self, item: Item, url: str | None = None) -> list[dict[str, Any]]:
        """The chat-completions request of each prompt of one item (`Answerer.prompts`: a level,
        or a statement under binary), its messages as the condition words them. `url`: the
        image's URL if already known (default: its data URL)."""
        if url is None and item["image"] is not None:
            url = image_data_url(item["image"], self.settings.image_format)
        s = self.settings
        return [request_body(s.model, openai_messages(m, url), s.answer, s.max_new_tokens) for m in self.prompts(item)]

    def request_texts(self, item: Item) -> list[dict[str, Any]]:
        """The request bodies as sent, less the image's data URL (its bytes are digested from the
        file; `image_format` says how they are encoded)."""
        if self.mode != "image":
            return self.bodies(item)
        return self.bodies(item, url=f"<image bytes as {self.settings.image_format}>")

    # ---------------------------------------------------------------- sending

    async def _ask(self, body: dict[str, Any], inflight: dict[str, asyncio.Task]) -> dict[str, Any] | RequestFailed:
        """The cached answer, the answer of the same request already in flight, or a new request."""
        key = request_key(body)
        cached = self.cache.get(key)
        if cached is None and key in inflight:  # the same question twice in a batch (text mode)
            result = await asyncio.shield(inflight[key])
            cached = result if not isinstance(result, RequestFailed) else None
            if cached is None:
                self._tick()
                return result
        if cached is not None:
            self.cached += 1
            self._tick()
            return cached
        inflight[key] = asyncio.ensure_future(self._send(key, body))
        result = await inflight[key]
        self._tick()
        return result

    async def _send(self, key: str, body: dict[str, Any]) -> dict[str, Any] | RequestFailed:
        try:
            response = await self.client.complete(body)
        except RequestFailed as err:
            self.errors += 1
            return err
        self.cache.put(key, response)
        self.sent += 1
        return response

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(sent=self.sent, cached=self.cached, errors=self.errors, refresh=False)

    async def _ask_all(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any] | RequestFailed]:
        inflight: dict[str, asyncio.Task] = {}
        tasks = [asyncio.ensure_future(self._ask(body, inflight)) for body in bodies]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:  # a fatal answer (HierError): stop the other requests before the loop closes
            for task in [*tasks, *inflight.values()]:
                task.cancel()
            await asyncio.gather(*tasks, *inflight.values(), return_exceptions=True)
            raise

    # ---------------------------------------------------------------- outputs

    def pick(self, output: dict[str, Any], options: list[str]) -> tuple[str | None, int | None]:
        """(letter, option index) from the server's logprobs answer; its text when no letter scored."""
        index = best_letter(letter_scores(output, len(options)))
        return (reply_text(output), None) if index is None else (LETTERS[index], index)

    def answer(self, items: list[Item]) -> list[SamplePrediction]:
        """The answered items' predictions; an item with a failed request goes to `on_failure`."""
        per_item = [self.bodies(item) for item in items]
        flat = [body for bodies in per_item for body in bodies]
        results = self.loop.run_until_complete(self._ask_all(flat))
        if flat and all(isinstance(r, RequestFailed) for r in results):
            raise HierError(f"no request of this batch was answered ({results[0]}); rerun the same command to resume")
        out, start = [], 0
        for item, bodies in zip(items, per_item):
            responses, start = results[start : start + len(bodies)], start + len(bodies)
            failures = [r for r in responses if isinstance(r, RequestFailed)]
            if failures:
                if self.on_failure is not None:
                    self.on_failure(item, f"{len(failures)} of {len(bodies)} requests failed: {failures[0]}")
                continue
            if self.answer_kind in self.generates:
                out.append(self.read_replies(item, [reply_text(r) for r in responses]))
            else:
                out.append(self.closed_prediction(item, responses, self.pick))
        return out
