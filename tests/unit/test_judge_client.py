"""The `openai` judge client against a real HTTP server on loopback that answers 429, 500, 401, garbage and stalls
past the client's time-out (no mock of urllib)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from desta.config import JudgeConfig
from desta.evaluate.judge import openai_judge
from desta.evaluate.judge_client import JudgeEndpointError
from desta.evaluate.official import sakura

KEY = "sk-test-SECRET-0123456789"
OK = {"choices": [{"message": {"role": "assistant", "content": "Explanation: fine.\nJudgement: correct"}}]}


class Script:
    """What the server answers, one step per request: (status, body, headers) or ("stall", seconds)."""

    def __init__(self, steps):
        self.steps, self.requests = list(steps), []


def serve(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            step = script.steps.pop(0) if script.steps else (200, OK, {})
            if step[0] == "stall":
                time.sleep(step[1])
                step = (200, OK, {})
            status, payload, headers = step
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (time-out)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def endpoint(monkeypatch):
    monkeypatch.setenv("DESTA_TEST_JUDGE_KEY", KEY)
    servers = []

    def make(steps, **client):
        script = Script(steps)
        server = serve(script)
        servers.append(server)
        cfg = JudgeConfig(kind="openai", model=sakura.JUDGE_MODEL, base_url=f"http://127.0.0.1:{server.server_port}/v1",
                          api_key_env="DESTA_TEST_JUDGE_KEY", temperature=sakura.JUDGE_TEMPERATURE,
                          top_p=sakura.JUDGE_TOP_P, max_new_tokens=64)
        return openai_judge(cfg, **{"timeout_s": 0.5, "max_retries": 3, "backoff_s": 0.01, **client}), script

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_retries_429_500_and_a_timeout_then_succeeds(endpoint, caplog):
    judge, script = endpoint([(429, {"error": "slow down"}, {"Retry-After": "0"}), (500, b"oops", {}), ("stall", 1.5)])
    with caplog.at_level(logging.WARNING):
        out = judge([sakura.judge_prompt("Q? (a) x (b) y", "(a) x", "(a) x")])
    assert out == ["Explanation: fine.\nJudgement: correct"]
    assert len(script.requests) == 4
    first = script.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == f"Bearer {KEY}"
    assert first["body"]["model"] == "gpt-4o-2024-11-20"
    assert (first["body"]["temperature"], first["body"]["top_p"]) == (0.0, 0.9)
    assert "max_tokens" not in first["body"]  # the official script records 1024 but never sends it
    assert first["body"]["messages"][0] == {"role": "system", "content": sakura.JUDGE_SYSTEM}
    assert [r.message.split(": ")[1].split(";")[0] for r in caplog.records][:2] == ["HTTP 429", "HTTP 500"]
    assert KEY not in caplog.text


def test_gives_up_with_a_clear_message(endpoint, caplog):
    judge, script = endpoint([(503, {"error": f"overloaded for key {KEY}"}, {})] * 10, max_retries=2)
    with caplog.at_level(logging.WARNING), pytest.raises(JudgeEndpointError) as err:
        judge([("s", "u")])
    msg = str(err.value)
    assert "failed 3 times" in msg and "HTTP 503" in msg and "gpt-4o-2024-11-20" in msg
    assert "/v1/chat/completions" in msg
    assert KEY not in msg and KEY not in caplog.text and "***" in msg
    assert len(script.requests) == 3


def test_time_outs_alone_exhaust_the_retries(endpoint):
    judge, script = endpoint([("stall", 1.0)] * 3, timeout_s=0.2, max_retries=1)
    with pytest.raises(JudgeEndpointError, match=r"failed 2 times; last error .*(?i:timed? ?out)"):
        judge([("s", "u")])
    assert len(script.requests) == 2


def test_auth_errors_are_not_retried_and_the_key_is_redacted(endpoint):
    judge, script = endpoint([(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {})])
    with pytest.raises(JudgeEndpointError, match="HTTP 401.*api_key_env") as err:
        judge([("s", "u")])
    assert KEY not in str(err.value) and len(script.requests) == 1


def test_malformed_answers_fail_clearly(endpoint):
    judge, _ = endpoint([(200, b"<html>proxy</html>", {})])
    with pytest.raises(JudgeEndpointError, match="non-JSON"):
        judge([("s", "u")])
    judge, _ = endpoint([(200, {"data": []}, {})])
    with pytest.raises(JudgeEndpointError, match=r"without choices\[0\].message.content"):
        judge([("s", "u")])


def test_refused_connection_is_retried_then_reported(monkeypatch):
    monkeypatch.setenv("DESTA_TEST_JUDGE_KEY", KEY)
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_port
    server.server_close()  # nothing listens there any more
    cfg = JudgeConfig(kind="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1",
                      api_key_env="DESTA_TEST_JUDGE_KEY", temperature=0.0, top_p=0.9, max_new_tokens=64)
    with pytest.raises(JudgeEndpointError, match="failed 2 times; last error ConnectionRefusedError"):
        openai_judge(cfg, timeout_s=0.5, max_retries=1, backoff_s=0.01)([("s", "u")])


def test_missing_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("DESTA_TEST_JUDGE_KEY", raising=False)
    cfg = JudgeConfig(kind="openai", model="m", base_url="http://127.0.0.1:1/v1", api_key_env="DESTA_TEST_JUDGE_KEY",
                      temperature=0.0, top_p=0.9, max_new_tokens=64)
    with pytest.raises(ValueError, match="DESTA_TEST_JUDGE_KEY is empty"):
        openai_judge(cfg)
