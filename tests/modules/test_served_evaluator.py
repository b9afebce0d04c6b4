"""ServedEvaluator against a real `transformers serve` of the tiny Qwen2.5-VL, on 127.0.0.1 only.

The server starts once for the module (a free port, readiness polled with a bounded loop) and
is always terminated in teardown. A small loopback proxy in front of it injects 429/500 answers
and checks an API key (`transformers serve` checks none); a stub answers with recorded
OpenAI-format bodies for the logprobs path (no server here returns logprobs).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
from lightning.pytorch import Trainer

from hiertrain.cli.main import main
from hiertrain.base.errors import HierError
from hiertrain.metrics.predictions import load_predictions
from hiertrain.datamodules.questions import HierVQADataModule
from hiertrain.modules.served_evaluator import ServedEvaluator
from hiertrain.modules.vllm_evaluator import VLLMEvaluator

REPO = Path(__file__).resolve().parents[2]
TRANSFORMERS = str(Path(sys.executable).with_name("transformers"))
N_IMAGES = 4
KEY_ENV, SECRET = "HIERTRAIN_TEST_SERVED_KEY", "sk-test-secret-7f3a9c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`transformers serve <tiny model>` on 127.0.0.1:<port>, started and stopped by the tests."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        self.model_dir, self.log, self.port = model_dir, log, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, ready_within: float = 120.0) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cmd = [TRANSFORMERS, "serve", str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port),
               "--device", "cpu", "--dtype", "float32"]  # fmt: skip
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"transformers serve not ready within {ready_within}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as a crashed or preempted one does."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


class Proxy(ThreadingHTTPServer):
    """Loopback HTTP proxy: forwards to `upstream`, or answers with `responder(path, body)`.

    `fail_every=k`: every k-th chat request gets 429 (odd failures) or 500 (even ones), with the
    `retry-after-ms` header real APIs send. `key`: requests without `Bearer <key>` get 401.
    """

    daemon_threads = True

    def __init__(self, upstream: str | None = None, fail_every: int = 0, key: str | None = None,
                 responder: Callable[[str, dict], tuple[int, dict]] | None = None) -> None:  # fmt: skip
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream, self.fail_every, self.key, self.responder = upstream, fail_every, key, responder
        self.lock = threading.Lock()
        self.chat_requests = self.injected = self.forwarded = 0
        self.bodies: list[dict] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class ProxyHandler(BaseHTTPRequestHandler):
    server: Proxy

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        proxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if proxy.key is not None and self.headers.get("Authorization") != f"Bearer {proxy.key}":
            return self._reply(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})  # fmt: skip
        chat = method == "POST" and self.path.endswith("/chat/completions")
        if chat:
            with proxy.lock:
                proxy.chat_requests += 1
                proxy.bodies.append(json.loads(body))
                fail = proxy.fail_every and proxy.chat_requests % proxy.fail_every == 0
                if fail:
                    proxy.injected += 1
                    status = 429 if proxy.injected % 2 else 500
            if fail:
                message = "Rate limit reached" if status == 429 else "The server had an error"
                return self._reply(status, {"error": {"message": message}}, {"retry-after-ms": "20"})
        if proxy.responder is not None:
            status, payload = proxy.responder(self.path, json.loads(body) if body else {})
            return self._reply(status, payload)
        conn = http.client.HTTPConnection(proxy.upstream, timeout=120)
        conn.request(method, self.path, body=body or None, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        with proxy.lock:
            proxy.forwarded += chat
        self.send_response(response.status)
        self.send_header("Content-Type", response.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tiny_qwen, tmp_path_factory):
    srv = Server(tiny_qwen, tmp_path_factory.mktemp("serve") / "serve.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def proxy_factory():
    made: list[Proxy] = []

    def make(**kwargs: Any) -> Proxy:
        made.append(Proxy(**kwargs))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def _data(synth_dir: Path, mode: str = "image", batch_size: int = 4, limit: int = N_IMAGES) -> HierVQADataModule:
    return HierVQADataModule(str(synth_dir / "questions_random.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"),
                             mode=mode, limit=limit, batch_size=batch_size)  # fmt: skip


def _trainer(root: Path) -> Trainer:
    return Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=str(root))  # fmt: skip


def served_run(url: str, model: str, root: Path, synth_dir: Path, mode: str = "image", batch_size: int = 4,
               **kwargs: Any) -> ServedEvaluator:  # fmt: skip
    kwargs = {"run_name": "run", "max_retries": 2, "timeout": 60.0, "progress_bar": False, **kwargs}
    evaluator = ServedEvaluator(url, model, **kwargs)
    _trainer(root).test(evaluator, datamodule=_data(synth_dir, mode, batch_size), verbose=False)
    return evaluator


@pytest.fixture(scope="module")
def reference(server, tiny_qwen, synth_dir, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted served `generate` runs (image and text mode), straight to the server."""
    out = {}
    for mode in ("image", "text"):
        root = tmp_path_factory.mktemp(f"served_{mode}")
        served_run(server.url, str(tiny_qwen), root, synth_dir, mode)
        out[mode] = root / "run"
    return out


# ---------------------------------------------------------------- served == in-process


def _visible(reply: str, special: list[str]) -> str:
    """A reply as `decode(skip_special_tokens=True)` would show it, without surrounding whitespace."""
    for token in special:
        reply = reply.replace(token, "")
    return reply.strip()


@pytest.mark.parametrize("mode", ["image", "text"])
@pytest.mark.slow
def test_served_replies_equal_in_process_generate(mode, reference, tiny_qwen, synth_dir, tmp_path, capsys):
    """Greedy both sides, same chat template and processor: the same tokens come out.

    `transformers serve` shows them differently for Qwen-family models: its reply parser
    (cli/serving/utils.py `parse_assistant_message`, the qwen response template) reads the raw
    decode with special tokens kept, removes only the end markers and strips the surrounding
    whitespace, where the in-process decode skips every special token and keeps whitespace. So
    each served reply must equal the in-process one once special tokens and outer whitespace are
    removed; a different token anywhere fails.
    """
    from transformers import AutoTokenizer

    local = VLLMEvaluator(str(tiny_qwen), answer="generate", run_name="run")
    _trainer(tmp_path).test(local, datamodule=_data(synth_dir, mode), verbose=False)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen))
    special = sorted((t.content for t in tokenizer.added_tokens_decoder.values() if t.special), key=len, reverse=True)
    ours = load_predictions(tmp_path / "run/predictions.jsonl")
    theirs = load_predictions(reference[mode] / "predictions.jsonl")
    assert [p.id for p in ours] == [p.id for p in theirs] == list(range(N_IMAGES))
    pairs = [(a, b) for p, q in zip(ours, theirs) for a, b in zip(p.levels, q.levels) if a.asked]
    assert pairs and all(b.asked and a.options == b.options for a, b in pairs)
    same = sum(a.reply == b.reply for a, b in pairs)
    for a, b in pairs:
        assert _visible(b.reply, special) == a.reply.strip(), (a.reply, b.reply)
        if a.reply == b.reply:
            assert a.letter == b.letter and a.correct == b.correct
    with capsys.disabled():
        print(f"\n[{mode}] served == in-process: {same}/{len(pairs)} replies byte-equal, "
              f"{len(pairs)}/{len(pairs)} equal after the documented normalisation")  # fmt: skip
    meta = json.loads((reference[mode] / "run.json").read_text())
    assert meta["backend"] == "served" and meta["base_url_host"] == f"127.0.0.1:{reference_port(reference)}"
    assert meta["served_model"] == str(tiny_qwen)
    usage = meta["usage"]
    assert 0 < usage["completion_tokens"] <= 5 * usage["requests"] and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert json.loads((tmp_path / "run/run.json").read_text())["backend"] == "transformers"


def reference_port(reference: dict[str, Path]) -> int:
    return int(json.loads((reference["image"] / "run.json").read_text())["base_url_host"].rsplit(":", 1)[1])


# ---------------------------------------------------------------- kill, restart, resume


@pytest.mark.slow
def test_server_killed_mid_run_then_resumed(server, reference, tiny_qwen, synth_dir, tmp_path):
    run = tmp_path / "run"
    requests_file = run / "requests.rank0.jsonl"
    killed = threading.Event()

    def kill_after(n: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed.is_set():
            if requests_file.is_file() and requests_file.read_text().count("\n") >= n:
                server.kill()
                killed.set()
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after, args=(6,), daemon=True)
    watcher.start()
    try:
        with pytest.raises(HierError, match="rerun the same command to resume"):
            served_run(server.url, str(tiny_qwen), tmp_path, synth_dir, batch_size=2, max_concurrency=2, max_retries=1)
    finally:
        killed.set()
        watcher.join(timeout=10)
        if server.proc.poll() is not None:
            server.start()
    answered_before = len(requests_file.read_text().splitlines())
    assert 6 <= answered_before < 4 * N_IMAGES
    evaluator = served_run(server.url, str(tiny_qwen), tmp_path, synth_dir, batch_size=2, max_concurrency=2)
    # nothing lost, nothing counted twice: the same predictions and metrics as the uninterrupted run
    assert (run / "predictions.jsonl").read_bytes() == (reference["image"] / "predictions.jsonl").read_bytes()
    assert (run / "metrics.json").read_bytes() == (reference["image"] / "metrics.json").read_bytes()
    assert evaluator.final_metrics["num_samples"] == N_IMAGES and evaluator.final_metrics["num_skipped"] == 0
    # nothing answered was sent again: each request was answered (and recorded) exactly once
    keys = [json.loads(line)["key"] for line in requests_file.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == json.loads((reference["image"] / "run.json").read_text())["usage"]["requests"]
    assert json.loads((run / "run.json").read_text())["usage"] == json.loads((reference["image"] / "run.json").read_text())["usage"]


# ---------------------------------------------------------------- 429 / 500, key, errors


@pytest.mark.slow
def test_429_and_500_are_retried_without_changing_results(server, reference, tiny_qwen, synth_dir, tmp_path,
                                                          proxy_factory, monkeypatch, capsys):  # fmt: skip
    proxy = proxy_factory(upstream=f"127.0.0.1:{server.port}", fail_every=3, key=SECRET)
    monkeypatch.setenv(KEY_ENV, SECRET)
    served_run(proxy.url, str(tiny_qwen), tmp_path, synth_dir, api_key_env=KEY_ENV, max_retries=3, progress_bar=True)
    run = tmp_path / "run"
    assert (run / "predictions.jsonl").read_bytes() == (reference["image"] / "predictions.jsonl").read_bytes()
    assert (run / "metrics.json").read_bytes() == (reference["image"] / "metrics.json").read_bytes()
    assert proxy.injected >= 4 and proxy.forwarded == 4 * N_IMAGES  # every failure retried, every answer used once
    assert proxy.chat_requests == proxy.forwarded + proxy.injected
    err = capsys.readouterr().err
    assert "req/s" in err and "errors=0" in err  # the progress bar (retried requests are not errors)
    assert all(b["temperature"] == 0 and b["max_tokens"] == 5 and "logprobs" not in b for b in proxy.bodies)
    image_parts = [p for b in proxy.bodies for m in b["messages"] for p in m["content"] if p["type"] == "image_url"]
    assert len(image_parts) == len(proxy.bodies) and image_parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    for path in run.rglob("*"):  # the key is never written
        assert SECRET.encode() not in path.read_bytes(), path


def test_text_mode_sends_no_image(server, tiny_qwen, synth_dir, tmp_path, proxy_factory):
    proxy = proxy_factory(upstream=f"127.0.0.1:{server.port}")
    served_run(proxy.url, str(tiny_qwen), tmp_path, synth_dir, mode="text")
    parts = [p for b in proxy.bodies for m in b["messages"] for p in m["content"]]
    assert parts and all(p["type"] == "text" for p in parts)
    assert {b["messages"][0]["content"][0]["text"] for b in proxy.bodies} == {"You are a helpful assistant."}


@pytest.mark.slow
def test_requests_failing_after_retries_are_named_skips_and_a_rerun_retries_only_them(
    server, reference, tiny_qwen, synth_dir, tmp_path, proxy_factory
):
    # every 5th request fails, and with no retries those requests fail for good
    proxy = proxy_factory(upstream=f"127.0.0.1:{server.port}", fail_every=5)
    with pytest.warns(UserWarning, match="not scored"):
        first = served_run(proxy.url, str(tiny_qwen), tmp_path, synth_dir, max_retries=0)
    failed = sorted(first.failed)
    assert 1 <= len(failed) <= 3 and first.final_metrics["num_skipped"] == len(failed)
    assert first.final_metrics["num_samples"] == N_IMAGES - len(failed)
    skipped = [json.loads(line) for line in (tmp_path / "run/skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == failed and all("HTTP 4" in s["reason"] or "HTTP 5" in s["reason"] for s in skipped)
    sent_first = proxy.forwarded
    retry = proxy_factory(upstream=f"127.0.0.1:{server.port}")
    second = served_run(retry.url, str(tiny_qwen), tmp_path, synth_dir)
    assert second.final_metrics["num_skipped"] == 0 and not second.failed
    assert retry.forwarded == 4 * N_IMAGES - sent_first  # only the unanswered requests were sent again
    assert (tmp_path / "run/predictions.jsonl").read_bytes() == (reference["image"] / "predictions.jsonl").read_bytes()


@pytest.mark.parametrize("case", ["wrong key", "unreachable", "unknown model"])
def test_bad_connection_settings_are_one_line_errors(case, server, tiny_qwen, synth_dir, tmp_path, proxy_factory,
                                                     monkeypatch):  # fmt: skip
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-000")
    url, model = server.url, str(tiny_qwen)
    if case == "wrong key":
        url = proxy_factory(upstream=f"127.0.0.1:{server.port}", key=SECRET).url
    elif case == "unreachable":
        url = f"http://127.0.0.1:{free_port()}/v1"
    else:
        model = "no-such-model"
    with pytest.raises(HierError) as err:
        served_run(url, model, tmp_path, synth_dir, api_key_env=KEY_ENV, max_retries=1, timeout=10.0)
    message = str(err.value)
    assert "\n" not in message and "sk-wrong-key-000" not in message
    expected = {"wrong key": f"refused the API key from ${KEY_ENV}", "unreachable": "cannot reach",
                "unknown model": "does not serve model 'no-such-model'"}[case]  # fmt: skip
    assert expected in message


def test_transformers_serve_gives_no_logprobs_so_the_run_says_use_generate(server, tiny_qwen, synth_dir, tmp_path):
    with pytest.raises(HierError, match="use answer: generate"):
        served_run(server.url, str(tiny_qwen), tmp_path, synth_dir, answer="logprobs")


# ---------------------------------------------------------------- logprobs on recorded bodies


def _top(pairs: list[tuple[str, float]]) -> list[dict]:
    return [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in pairs]


def recorded_chat_completion(top: list[tuple[str, float]]) -> dict:
    """An OpenAI chat completion with `logprobs: true, top_logprobs: 20, max_tokens: 1`, in the
    documented shape (choices[0].logprobs.content[i] = {token, logprob, bytes, top_logprobs})."""
    first = top[0] if top else ("I", -0.01)
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "object": "chat.completion", "created": 1741570283,
        "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_fc9f1d7035", "service_tier": "default",
        "choices": [{
            "index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": first[0], "refusal": None, "annotations": []},
            "logprobs": {"content": [{**_top([first])[0], "top_logprobs": _top(top)}], "refusal": None},
        }],
        "usage": {"prompt_tokens": 870, "completion_tokens": 1, "total_tokens": 871,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    }  # fmt: skip


# Per level (by the level name in the question): the top list and the letter it must give.
LOGPROB_CASES = {
    "family": ([("C", -0.05), ("B", -3.2), ("A", -4.0), ("The", -5.0)], "B"),  # 2 options: C is no option
    "shape": ([(" B", -0.4), ("D", -1.3), ("B", -2.0), ("b", -0.1)], "B"),  # best spelling of B wins; "b" is no letter
    "colour": ([("I", -0.2), ("The", -1.9), ("Sorry", -2.5)], None),  # no option letter in the list: unscored
    "texture": ([("E", -0.01), ("A", -0.9), ("D", -0.7), (" A", -0.3)], "A"),  # E is past the 4 options
}


@pytest.mark.slow
def test_logprobs_letters_from_recorded_responses(synth_dir, tmp_path, proxy_factory):
    def respond(path: str, body: dict) -> tuple[int, dict]:
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "gpt-4o", "object": "model", "owned_by": "system"}]}
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
        question = body["messages"][-1]["content"][-1]["text"]
        level = next(name for name in LOGPROB_CASES if f"the {name} of" in question)
        return 200, recorded_chat_completion(LOGPROB_CASES[level][0])

    stub = proxy_factory(responder=respond)
    evaluator = served_run(stub.url, "gpt-4o", tmp_path, synth_dir, answer="logprobs")
    preds = load_predictions(tmp_path / "run/predictions.jsonl")
    assert len(preds) == N_IMAGES
    for p in preds:
        for lv in p.levels:
            assert lv.letter == LOGPROB_CASES[lv.name][1], lv.name
            assert lv.correct == (lv.letter is not None and lv.options["ABCD".index(lv.letter)] == lv.truth)
    assert evaluator.final_metrics["unparseable_rate"] == pytest.approx(0.25)
    meta = json.loads((tmp_path / "run/run.json").read_text())
    assert meta["answer"] == "logprobs" and meta["served_model"] == "gpt-4o-2024-08-06"
    assert meta["usage"] == {"requests": 4 * N_IMAGES, "prompt_tokens": 870 * 4 * N_IMAGES,
                             "completion_tokens": 4 * N_IMAGES, "total_tokens": 871 * 4 * N_IMAGES}  # fmt: skip


@pytest.mark.parametrize("refusal", ["400", "absent"])
@pytest.mark.slow
def test_a_server_refusing_logprobs_says_use_generate(refusal, synth_dir, tmp_path, proxy_factory):
    def respond(path: str, body: dict) -> tuple[int, dict]:
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
        if refusal == "400":
            return 400, {"error": {"message": "This model does not support logprobs.", "type": "invalid_request_error"}}
        response = recorded_chat_completion([("A", -0.1)])
        del response["choices"][0]["logprobs"]
        return 200, response

    with pytest.raises(HierError) as err:
        served_run(proxy_factory(responder=respond).url, "m", tmp_path, synth_dir, answer="logprobs")
    assert "use answer: generate" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the CLI and its config


def test_hiertrain_test_with_the_served_config(server, tiny_qwen, synth_dir, tmp_path, proxy_factory, monkeypatch,
                                               capsys):  # fmt: skip
    proxy = proxy_factory(upstream=f"127.0.0.1:{server.port}", key=SECRET)
    monkeypatch.setenv(KEY_ENV, SECRET)
    argv = [
        "test", "--config", str(REPO / "configs/models/served.yaml"),
        f"--model.base_url={proxy.url}", f"--model.model={tiny_qwen}", f"--model.api_key_env={KEY_ENV}",
        "--model.max_retries=1", "--model.progress_bar=false", "--data=hiertrain.datamodules.questions.HierVQADataModule",
        f"--data.questions={synth_dir / 'questions_random.jsonl'}", f"--data.taxonomy={synth_dir / 'taxonomy.json'}",
        "--data.mode=text", "--data.limit=2", f"--trainer.default_root_dir={tmp_path}", "--wandb=false",
    ]  # fmt: skip
    assert main(argv) == 0
    (run,) = [p.parent for p in tmp_path.rglob("run.json")]
    assert run.name == f"{tiny_qwen.name}-served-questions_random-text-generate-v0"
    meta = json.loads((run / "run.json").read_text())
    assert meta["backend"] == "served" and meta["num_samples"] == 2
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert proxy.forwarded == len(proxy.bodies) > 0


def test_a_served_run_never_continues_an_in_process_run(synth_dir, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/run.json").write_text(json.dumps({"kind": "eval", "model": "m", "backend": "transformers"}))
    with pytest.raises(HierError, match="holds a 'transformers' run, not a served one"):
        served_run("http://127.0.0.1:9/v1", "m", tmp_path, synth_dir)


# ---------------------------------------------------------------- question conditions, run identity and name


def _condition_run(url: str, root: Path, synth_dir: Path, condition: str, mode: str = "image", run_name: str | None = "run",
                   data: dict | None = None, **kwargs: Any) -> tuple[ServedEvaluator, HierVQADataModule]:  # fmt: skip
    dm = HierVQADataModule(str(synth_dir / "questions_random.jsonl"), taxonomy=str(synth_dir / "taxonomy.json"), mode=mode,
                           limit=N_IMAGES, batch_size=4, condition=condition, **(data or {}))  # fmt: skip
    evaluator = ServedEvaluator(url, "m", run_name=run_name, max_retries=0, timeout=30.0, progress_bar=False, **kwargs)
    _trainer(root).test(evaluator, datamodule=dm, verbose=False)
    return evaluator, dm


# What the stub server replies under each condition, and what the run must read from it.
CONDITION_REPLIES = {
    "taxonomy": "B",
    "cot": "The outline is smooth. Therefore, the answer is B.",  # final_letter: B
    "bio_cot": "B",
    "binary": "Yes",  # every statement "Yes": conditions.binary_choice of all-ones
    "open": "circle",
}


@pytest.mark.parametrize("condition", list(CONDITION_REPLIES))
@pytest.mark.slow
def test_every_condition_is_served_with_its_text_and_reading(condition, synth_dir, tmp_path, proxy_factory):
    from hiertrain.protocol import conditions

    bodies: list[dict] = []

    def respond(path: str, body: dict) -> tuple[int, dict]:
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
        bodies.append(body)
        response = recorded_chat_completion([("A", -0.1)])
        del response["choices"][0]["logprobs"]
        response["choices"][0]["message"]["content"] = CONDITION_REPLIES[condition]
        return 200, response

    data = {"subject": "plant"} if condition == "bio_cot" else {}
    evaluator, dm = _condition_run(proxy_factory(responder=respond).url, tmp_path, synth_dir, condition, data=data,
                                   max_new_tokens=64)  # fmt: skip
    items = [dm.dataset()[i] for i in range(N_IMAGES)]
    if condition == "binary":  # one request per statement, each the statement's own chat
        sent = [m for item in items for lq in item["levels"] for _, m in lq.statements]
    else:
        sent = [lq.messages for item in items for lq in item["levels"]]
    assert len(bodies) == len(sent) > 0
    texts = sorted(json.dumps([c["text"] for m in b["messages"] for c in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]) if "text" in c]) for b in bodies)  # noqa: E501
    wanted = sorted(json.dumps([c["text"] for m in msgs for c in m["content"] if c.get("type") == "text"]) for msgs in sent)
    assert texts == wanted  # the condition's words, exactly as the in-process evaluator renders them
    system = bodies[0]["messages"][0]
    system_text = system["content"] if isinstance(system["content"], str) else system["content"][0]["text"]
    if condition == "taxonomy":
        assert system_text.startswith(conditions.TAXONOMY_SYSTEM) and len(system_text) > len(conditions.TAXONOMY_SYSTEM)
    if condition == "bio_cot":
        assert system_text == conditions.BIO_COT_SYSTEM["plant"]
    if condition == "cot":
        assert conditions.COT_PREFIX["typographic"] in json.dumps(bodies[0], ensure_ascii=False)
    preds = load_predictions(tmp_path / "run/predictions.jsonl")
    assert len(preds) == N_IMAGES
    for p, item in zip(preds, items, strict=True):
        for lv, lq in zip([lv for lv in p.levels if lv.asked], item["levels"], strict=True):
            if condition == "open":
                found = evaluator.matcher.match("circle", lq.level)
                assert lv.predicted == found.node and lv.reply == "circle"
            elif condition == "binary":
                index = conditions.binary_choice([1] * len(lq.options))
                assert lv.predicted == (None if index is None else lq.options[index])
            else:
                assert lv.letter == "B" and lv.predicted == lq.options[1]
    meta = json.loads((tmp_path / "run/run.json").read_text())
    assert meta["condition"] == condition and meta["backend"] == "served"


def _replying(bodies: list[dict], content: str | None = None):
    """A chat server (for proxy_factory) that records each request body and replies `content`
    (None: the recorded completion's own text), without logprobs."""

    def respond(path: str, body: dict) -> tuple[int, dict]:
        if path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": "m", "object": "model"}]}
        bodies.append(body)
        response = recorded_chat_completion([("A", -0.1)])
        del response["choices"][0]["logprobs"]
        if content is not None:
            response["choices"][0]["message"]["content"] = content
        return 200, response

    return respond


def test_a_cot_rerun_with_the_other_apostrophe_is_refused(synth_dir, tmp_path, proxy_factory):
    url = proxy_factory(responder=_replying([], "So the answer is A.")).url
    _condition_run(url, tmp_path, synth_dir, "cot", data={"cot_apostrophe": "typographic"})
    with pytest.raises(HierError) as err:
        _condition_run(url, tmp_path, synth_dir, "cot", data={"cot_apostrophe": "ascii"})
    assert "cot_apostrophe ('typographic', this run 'ascii')" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("condition", ["plain", "cot"])
@pytest.mark.slow
def test_the_wandb_name_of_a_served_run_is_its_run_directory(condition, synth_dir, tmp_path, proxy_factory):
    from hiertrain.cli.lightning import _logger_identity

    evaluator, dm = _condition_run(proxy_factory(responder=_replying([])).url, tmp_path, synth_dir, condition, run_name=None)
    (run,) = [p.parent for p in tmp_path.rglob("run.json")]
    assert run.name == evaluator.run_dir.path.name == f"m-served-questions_random-image-generate-v0" + (
        "" if condition == "plain" else f"-{condition}"
    )
    assert _logger_identity(evaluator, dm)["name"] == run.name


def test_served_cot_and_taxonomy_replies_equal_in_process(server, tiny_qwen, synth_dir, tmp_path):
    """Text mode on the real `transformers serve`: same condition text in, same greedy tokens out."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_qwen))
    special = sorted((t.content for t in tokenizer.added_tokens_decoder.values() if t.special), key=len, reverse=True)
    for condition in ("cot", "taxonomy"):
        dm_args = dict(taxonomy=str(synth_dir / "taxonomy.json"), mode="text", limit=2, condition=condition)
        local = VLLMEvaluator(str(tiny_qwen), answer="generate", run_name="local", max_new_tokens=5)
        _trainer(tmp_path / condition).test(local, datamodule=HierVQADataModule(str(synth_dir / "questions_random.jsonl"), **dm_args), verbose=False)  # noqa: E501
        served = ServedEvaluator(server.url, str(tiny_qwen), run_name="served", max_retries=1, timeout=60.0, progress_bar=False)
        _trainer(tmp_path / condition).test(served, datamodule=HierVQADataModule(str(synth_dir / "questions_random.jsonl"), **dm_args), verbose=False)  # noqa: E501
        ours = load_predictions(tmp_path / condition / "local/predictions.jsonl")
        theirs = load_predictions(tmp_path / condition / "served/predictions.jsonl")
        pairs = [(a, b) for p, q in zip(ours, theirs, strict=True) for a, b in zip(p.levels, q.levels) if a.asked]
        assert pairs
        for a, b in pairs:
            assert a.question == b.question and _visible(b.reply, special) == a.reply.strip(), (condition, a.reply, b.reply)


@pytest.mark.slow
def test_a_condition_registered_later_is_served(synth_dir, tmp_path, proxy_factory):
    """ServedEvaluator answers the live registry: a new condition class is served with its own text."""
    from hiertrain.protocol import conditions

    @conditions.register
    class Terse(conditions.Plain):
        name = "terse"

        def question(self, prompt, options, cot_apostrophe="typographic"):
            return prompt + "\n" + conditions.lettered(options) + "\nReply with the letter only."

    bodies: list[dict] = []
    respond = _replying(bodies, "B")

    try:
        _condition_run(proxy_factory(responder=respond).url, tmp_path, synth_dir, "terse")
    finally:
        conditions.REGISTRY.pop("terse")
    assert bodies and all("Reply with the letter only." in json.dumps(b) for b in bodies)
    preds = load_predictions(tmp_path / "run/predictions.jsonl")
    assert all(lv.letter == "B" and lv.predicted == lv.options[1] for p in preds for lv in p.levels if lv.asked)
    assert json.loads((tmp_path / "run/run.json").read_text())["condition"] == "terse"


@pytest.mark.slow
def test_a_served_resume_resends_only_the_sample_whose_image_bytes_changed(synth_dir, tmp_path, proxy_factory):
    """Per-sample request digest through the served backend: every line has one, and a resume
    re-asks exactly the sample whose image changed (its levels' requests, nothing else)."""
    import shutil

    from PIL import Image

    data = tmp_path / "synth"
    shutil.copytree(synth_dir, data)
    bodies: list[dict] = []
    respond = _replying(bodies, "B")

    url = proxy_factory(responder=respond).url
    _, dm = _condition_run(url, tmp_path, data, "plain")
    lines = [json.loads(line) for line in (tmp_path / "run/predictions.jsonl").read_text().splitlines()]
    assert len(lines) == N_IMAGES and all(len(line["request"]) == 64 for line in lines)
    changed = lines[2]
    path = data / changed["image"]
    with Image.open(path) as image:
        image = image.convert("RGB")
    image.putpixel((0, 0), tuple(255 - c for c in image.getpixel((0, 0))))
    image.save(path)
    (tmp_path / "run/requests.rank0.jsonl").unlink()  # no cached answers: every re-asked request reaches the server
    bodies.clear()
    _condition_run(url, tmp_path, data, "plain")
    asked = sum(1 for lv in changed["levels"] if lv["asked"])
    assert len(bodies) == asked > 0
    resumed = [json.loads(line) for line in (tmp_path / "run/predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in resumed] == [line["id"] for line in lines]
    assert [line["request"] for line in resumed if line["id"] != changed["id"]] == [
        line["request"] for line in lines if line["id"] != changed["id"]
    ]
    assert resumed[2]["request"] != changed["request"]
