"""served_client: request bodies, image data URLs, letter scores from a top-logprobs list."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from hiertrain.core.errors import HierError
from hiertrain.core.prompts import chat_messages
from hiertrain.vlm.served_client import (
    best_letter,
    image_data_url,
    letter_scores,
    openai_messages,
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
