"""served_client: request bodies, image data URLs, letter scores from a top-logprobs list."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from PIL import Image

from hiertrain.base.errors import HierError
from hiertrain.protocol.prompts import chat_messages
from hiertrain.vlm.served_client import (
    best_letter,
    image_data_url,
    letter_scores,
    openai_messages,
    reply_text,
    request_body,
    url_host,
)


def _response(top):
    return {"model": "m", "choices": [{"message": {"content": "x"}, "logprobs": {"content": [
        {"token": "x", "logprob": -0.1, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]}}]}  # fmt: skip


def test_png_data_url_carries_the_exact_pixels():
    image = Image.new("RGB", (7, 5))
    image.putdata([(i * 7 % 256, i * 13 % 256, i * 29 % 256) for i in range(35)])
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    back = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    assert list(back.getdata()) == list(image.getdata())
    assert image_data_url(image, "jpeg").startswith("data:image/jpeg;base64,")
    with pytest.raises(HierError):
        image_data_url(image, "gif")


def test_messages_and_bodies():
    messages = openai_messages(chat_messages("Q?", "image"), "data:image/png;base64,AAA")
    assert messages[1]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}, {"type": "text", "text": "Q?"}]  # fmt: skip
    assert [p["type"] for m in openai_messages(chat_messages("Q?", "text"), None) for p in m["content"]] == ["text", "text"]
    with pytest.raises(HierError):
        openai_messages(chat_messages("Q?", "image"), None)
    generate = request_body("m", messages, "generate", 5)
    assert generate["temperature"] == 0 and generate["max_tokens"] == 5 and "logprobs" not in generate
    logprobs = request_body("m", messages, "logprobs", 5)
    assert (logprobs["max_tokens"], logprobs["logprobs"], logprobs["top_logprobs"]) == (1, True, 20)
    assert url_host("https://user:pw@api.example.com:8443/v1") == "api.example.com:8443"


def test_letter_scores_read_the_first_tokens_top_list():
    scores = letter_scores(_response([(" B", -0.5), ("B", -1.0), ("A", -2.0), ("E", -0.1), ("b", -0.01)]), 4)
    assert scores == [-2.0, -0.5, None, None]  # best spelling of B; E is past 4 options; "b" is no letter
    assert best_letter(scores) == 1
    assert best_letter([None, None]) is None
    assert best_letter([-1.0, -1.0]) == 0  # ties: the first letter
    with pytest.raises(HierError, match="use answer: generate"):
        letter_scores({"model": "m", "choices": [{"message": {"content": "A"}}]}, 4)


# ---------------------------------------------------------------- malformed answers (issue 22 items 8, 15)


class _Stub:
    """A loopback HTTP server answering every request with `answer(method, path) -> (status, content type, body)`."""

    def __init__(self, answer) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, kind, body = answer(self.command, self.path)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
COMPLETION = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
              "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "B"}}]}  # fmt: skip


def _ask(base_url: str) -> dict:
    from hiertrain.vlm.served_client import ServedClient

    async def go() -> dict:
        client = ServedClient(base_url, "sk-x", "$KEY", timeout=10.0, max_retries=0, max_concurrency=2)
        try:
            await client.check("m")
            return await client.complete(request_body("m", openai_messages(chat_messages("Q?", "text"), None), "generate", 5))
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    "case, expected",
    [
        ("chat not json", "/v1/chat/completions answered HTTP 200 with a body that is not JSON (application/json: 'Bad gateway, try later')"),
        ("chat html", "/v1/chat/completions answered HTTP 200 with a body that is not JSON (text/html: '<html><body>login</body></html>')"),
        ("no choices", ": the server answered a chat completion without a choice (choices []; model 'm')"),
        ("models html", "/v1/models answered HTTP 200 with a body that is not JSON (text/html: '<html><body>login</body></html>')"),
    ],
)  # fmt: skip
def test_malformed_server_answers_are_one_line_errors(case, expected):
    # item 8: JSONDecodeError in reply_text, IndexError on "choices": [], AttributeError on an HTML model list
    def answer(method: str, path: str) -> tuple[int, str, str]:
        if path.endswith("/models"):
            return (200, "text/html", "<html><body>login</body></html>") if case == "models html" else (200, "application/json", MODELS)
        if case == "chat not json":
            return 200, "application/json", "Bad gateway, try later"
        if case == "chat html":
            return 200, "text/html", "<html><body>login</body></html>"
        return 200, "application/json", json.dumps({**COMPLETION, "choices": []})

    stub = _Stub(answer)
    try:
        with pytest.raises(HierError) as err:
            _ask(stub.root + "/v1")
    finally:
        stub.close()
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "does not end in /v1" not in message  # the URL is right; the server is not


def test_a_well_formed_answer_still_reads():
    stub = _Stub(lambda method, path: (200, "application/json", MODELS if path.endswith("/models") else json.dumps(COMPLETION)))
    try:
        assert reply_text(_ask(stub.root + "/v1")) == "B"
    finally:
        stub.close()


def test_a_404_without_v1_in_base_url_hints_at_v1():
    # item 15: "does not serve model (HTTP 404)" for a base_url missing its /v1
    def answer(method: str, path: str) -> tuple[int, str, str]:
        if not path.startswith("/v1/"):
            return 404, "application/json", json.dumps({"detail": "Not Found"})
        return 200, "application/json", MODELS if path.endswith("/models") else json.dumps(COMPLETION)

    stub = _Stub(answer)
    try:
        with pytest.raises(HierError) as err:
            _ask(stub.root)
        assert reply_text(_ask(stub.root + "/v1")) == "B"  # the hinted URL works
    finally:
        stub.close()
    assert str(err.value) == (
        f"127.0.0.1:{stub.root.rsplit(':', 1)[1]} does not serve model 'm' (HTTP 404: Not Found); base_url {stub.root} "
        f"does not end in /v1, where OpenAI-compatible servers serve (try {stub.root}/v1)"
    )
