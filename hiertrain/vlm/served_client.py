"""Asking an OpenAI-compatible chat server (OpenAI, vLLM, SGLang, `transformers serve`).

The one interface every server speaks: `POST <base_url>/chat/completions`. Requests go through
the `openai` package's `AsyncOpenAI` client, whose own retry policy (exponential backoff with
jitter, honouring `Retry-After`; retries on connection errors, timeouts, 408/409/429/5xx) is used
as is, with `max_retries` and `timeout` from the config. At most `max_concurrency` requests are
in flight (a semaphore).

Errors are sorted in two kinds:
- fatal for the whole run (wrong key, unknown model, a refused request, logprobs not returned):
  a one-line `HierError`;
- failed for one request after every retry (429/5xx/connection/timeout): `RequestFailed`, which
  the evaluator turns into a named, counted skip that the next run retries.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any
from urllib.parse import urlsplit

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import LETTERS

TOP_LOGPROBS = 20  # the most OpenAI returns; vLLM and SGLang accept it too


class RequestFailed(Exception):
    """A request that still failed after the client's retries (the message says why)."""


def url_host(base_url: str) -> str:
    """`host[:port]` of a base URL, without any user:password part (what run.json records)."""
    parts = urlsplit(base_url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else base_url


def image_data_url(image: Any, image_format: str = "png") -> str:
    """The image exactly as the datamodule loaded it, as a base64 data URL (PNG is lossless)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        raise HierError(f"image_format {image_format!r} is not 'png' or 'jpeg'")
    return f"data:image/{image_format};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], image_url: str | None) -> list[dict]:
    """Our chat messages (prompts.chat_messages) in OpenAI form: the image item becomes an
    `image_url` part carrying `image_url`; text parts are unchanged."""
    out = []
    for message in messages:
        content = []
        for part in message["content"]:
            if part.get("type") == "image":
                if image_url is None:
                    raise HierError("an image question reached the served evaluator without an image")
                content.append({"type": "image_url", "image_url": {"url": image_url}})
            else:
                content.append({"type": "text", "text": part["text"]})
        out.append({"role": message["role"], "content": content})
    return out


def request_body(model: str, messages: list[dict], answer: str, max_new_tokens: int) -> dict[str, Any]:
    """The chat-completions body of one question (greedy; logprobs: one token, its top-20 list)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "temperature": 0}
    if answer == "generate":
        body["max_tokens"] = max_new_tokens
    elif answer == "logprobs":
        body.update(max_tokens=1, logprobs=True, top_logprobs=TOP_LOGPROBS)
    else:
        raise HierError(f"answer {answer!r} is not 'generate' or 'logprobs'")
    return body


def reply_text(response: dict[str, Any]) -> str:
    """The assistant's reply text ("" when the server sent none)."""
    return (first_choice(response).get("message") or {}).get("content") or ""


def first_choice(response: Any) -> dict[str, Any]:
    """`choices[0]` of a chat completion; a body without one is a one-line HierError, not an
    IndexError (`"choices": []`) or a TypeError (no object at all)."""
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        shown = "no object" if not isinstance(response, dict) else f"choices {json.dumps(choices)[:80]}"
        model = response.get("model") if isinstance(response, dict) else None
        raise HierError(f"the server answered a chat completion without a choice ({shown}; model {model!r})")
    return choices[0]


def letter_scores(response: dict[str, Any], num_options: int) -> list[float | None]:
    """Log-probability of each option letter at the first reply token, from its top list.

    A letter counts in any spelling that strips to it ("A", " A"); the best spelling wins. A letter
    absent from the top list is unscored (None): its probability is unknown, not zero.
    Shape read (OpenAI chat completions): `choices[0].logprobs.content[0].top_logprobs` =
    `[{"token": "A", "logprob": -0.1, "bytes": [...]}, ...]`.
    """
    logprobs = first_choice(response).get("logprobs") or {}
    content = logprobs.get("content") or []
    if not content:
        raise HierError(
            f"the server returned no logprobs for model {response.get('model')!r}; "
            "it does not support them: use answer: generate"
        )
    scores: list[float | None] = [None] * num_options
    for entry in content[0].get("top_logprobs") or []:
        token = str(entry.get("token", "")).strip()
        if len(token) == 1 and token in LETTERS[:num_options]:
            index = LETTERS.index(token)
            value = float(entry["logprob"])
            if scores[index] is None or value > scores[index]:
                scores[index] = value
    return scores


def best_letter(scores: list[float | None]) -> int | None:
    """Index of the highest-scored letter (first on ties); None when no letter was scored."""
    scored = [(value, -index) for index, value in enumerate(scores) if value is not None]
    return -max(scored)[1] if scored else None


class ServedClient:
    """Bounded, retried chat requests to one server; a preflight `check` of key, URL and model."""

    def __init__(self, base_url: str, api_key: str, key_source: str, timeout: float, max_retries: int,
                 max_concurrency: int) -> None:  # fmt: skip
        from openai import AsyncOpenAI

        if max_concurrency < 1:
            raise HierError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url, self.host, self.key_source = base_url, url_host(base_url), key_source
        self.max_retries = max_retries
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
        self.semaphore = asyncio.Semaphore(max_concurrency)

    async def close(self) -> None:
        await self.client.close()

    async def check(self, model: str) -> None:
        """Fail fast, in one line, on an unreachable URL, a refused key or a model the server lacks."""
        import openai

        try:
            raw = await self.client.models.with_raw_response.list()
        except openai.NotFoundError:
            return  # no /models route on this server: the first request will tell
        except openai.APIError as err:
            raise self.fatal(err) from None
        body = self._json_body(raw.http_response, "models")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise HierError(f"{self.base_url}/models answered a JSON body without a model list (no 'data' list){self.v1_hint()}")
        listed = [str(m.get("id")) for m in data if isinstance(m, dict) and m.get("id") is not None]
        if listed and model not in listed:
            shown = ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")
            raise HierError(f"{self.host} does not serve model {model!r} (it serves: {shown})")

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """The server's JSON answer; `RequestFailed` after the retries; `HierError` when fatal."""
        import openai

        async with self.semaphore:
            try:
                raw = await self.client.chat.completions.with_raw_response.create(**body)
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                raise RequestFailed(self.describe(err)) from None
            except openai.APIStatusError as err:
                if err.status_code in (408, 409) or err.status_code >= 500:
                    raise RequestFailed(self.describe(err)) from None
                raise self.fatal(err, body) from None
        self._json_body(raw.http_response, "chat/completions")  # HTTP 200 with HTML or plain text: one line
        response = raw.parse()
        if not hasattr(response, "model_dump"):
            raise HierError(f"{self.base_url}/chat/completions answered something that is not a chat completion{self.v1_hint()}")
        answer = response.model_dump(mode="json", exclude_none=True)
        try:
            first_choice(answer)  # "choices": [] is a one-line error here, never an IndexError later
        except HierError as err:
            raise HierError(f"{self.host}: {err}") from None
        return answer

    def _json_body(self, http: Any, route: str) -> Any:
        """The JSON of a 200 answer; a body that is not JSON (an HTML page, plain text) is a
        one-line HierError naming the route, what came instead, and the /v1 hint."""
        try:
            return json.loads(http.text)
        except ValueError:
            kind = http.headers.get("content-type", "no content type").split(";")[0]
            start = " ".join(http.text.split())[:60]
            raise HierError(
                f"{self.base_url}/{route} answered HTTP {http.status_code} with a body that is not JSON "
                f"({kind}: {start!r}){self.v1_hint()}"
            ) from None

    def v1_hint(self) -> str:
        """'; ... /v1' when base_url does not end in /v1 (OpenAI-compatible servers serve under it)."""
        path = urlsplit(self.base_url).path.rstrip("/")
        if path.endswith("/v1"):
            return ""
        return f"; base_url {self.base_url} does not end in /v1, where OpenAI-compatible servers serve (try {self.base_url.rstrip('/')}/v1)"

    def describe(self, err: Exception) -> str:
        import openai

        tries = f"after {self.max_retries + 1} tries"
        if isinstance(err, openai.APITimeoutError):
            return f"{self.host}: request timed out {tries}"
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err.__context__
            return f"{self.host}: cannot connect {tries} ({cause or err})".replace("\n", " ")
        if isinstance(err, openai.APIStatusError):
            return f"{self.host}: HTTP {err.status_code} {tries} ({_server_message(err)})"
        return f"{self.host}: {err}".replace("\n", " ")

    def fatal(self, err: Exception, body: dict[str, Any] | None = None) -> HierError:
        """The one-line error for a failure no retry can fix (the key itself is never shown)."""
        import openai

        if isinstance(err, openai.AuthenticationError):
            return HierError(f"{self.host} refused the API key from {self.key_source} (HTTP 401: {_server_message(err)})")
        if isinstance(err, openai.PermissionDeniedError):
            return HierError(f"{self.host} denied access with the API key from {self.key_source} (HTTP 403: {_server_message(err)})")
        if isinstance(err, openai.NotFoundError) and body is not None:
            return HierError(
                f"{self.host} does not serve model {body.get('model')!r} (HTTP 404: {_server_message(err)}){self.v1_hint()}"
            )
        if isinstance(err, openai.APIStatusError):
            message = _server_message(err)
            if body is not None and body.get("logprobs") and "logprob" in message.lower():
                return HierError(f"{self.host} refuses logprobs ({message}): use answer: generate")
            return HierError(f"{self.host} refused the request (HTTP {err.status_code}: {message})")
        if isinstance(err, openai.APIConnectionError):
            return HierError(self.describe(err).replace(": cannot connect", f": cannot reach {self.base_url}", 1))
        return HierError(f"{self.host}: {err}".replace("\n", " "))


def _server_message(err: Any) -> str:
    """The server's own error message, on one line."""
    body = getattr(err, "body", None)
    message = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        message = message or body.get("detail") or body.get("message")
    text = str(message or getattr(err, "message", "") or err)
    return " ".join(text.split())[:300]
