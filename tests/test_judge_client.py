"""The LLM judge client against servers that misbehave the way real and hostile ones do, all on 127.0.0.1."""

import contextlib
import json
import re
import socket
import threading
import time

import pytest
from judge_server import Server, send

from ple.errors import PLEError
from ple.evaluation.judges import REMINDER, UNSCORED, LLMJudge, both_orders


def chat(content, finish_reason="stop"):
    return {"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]}


def verdict_for(content: str) -> str:
    return "A" if "[Response A]\nGOOD" in content else "B"


@pytest.fixture
def servers():
    started = []

    def start(respond, threaded=True):
        started.append(Server(respond, threaded))
        return started[-1]

    yield start
    for s in started:
        s.close()


def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(servers, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    elsewhere = servers(lambda h, c: send(h, 200, chat("A")))
    redirecting = servers(lambda h, c: send(h, 302, b"", {"Location": elsewhere.url + "/chat/completions"}))
    judge = LLMJudge(redirecting.url, "m", cache_path=tmp_path / "cache.jsonl", progress=False)
    with pytest.raises(PLEError, match="redirected \\(HTTP 302\\) to http://127.0.0.1:\\d+/v1/chat/completions"):
        judge.judge(["p"], ["GOOD"], ["bad"])
    assert redirecting.requests[0]["auth"] == "Bearer sk-secret" and elsewhere.requests == []


def test_a_4xx_quotes_the_server(servers, tmp_path):
    pinned = servers(lambda h, c: send(h, 400, {"error": {"message": "Server is pinned to 'tiny'"}}))
    with pytest.raises(PLEError, match="answered HTTP 400: Server is pinned to 'tiny'"):
        LLMJudge(pinned.url, "other", progress=False).judge(["p"], ["a"], ["b"])
    assert len(pinned.requests) == 1


def test_replies_without_text_are_unparseable_never_cached_and_parts_are_read(servers, tmp_path):
    replies = {"int": 7, "parts": [{"type": "text", "text": "Thinking.\n"}, {"type": "text", "text": "A"}]}
    kind = {"now": "int"}
    server = servers(lambda h, c: send(h, 200, chat(replies[kind["now"]])))
    cache = tmp_path / "cache.jsonl"
    judge = LLMJudge(server.url, "m", cache_path=cache, progress=False)
    assert judge.judge(["p"], ["a"], ["b"]) == [UNSCORED]
    assert judge.stats["unparseable"] == 2 and not cache.exists()  # nothing cached: the rerun asks again
    kind["now"] = "parts"
    assert LLMJudge(server.url, "m", cache_path=cache, progress=False).judge(["p"], ["a"], ["b"]) == ["first"]


@pytest.mark.parametrize("fault", ["not utf-8", "truncated", "not http"])
def test_broken_replies_are_retried_then_one_line(servers, tmp_path, fault):
    if fault == "not http":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def garbage():
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.close()

        threading.Thread(target=garbage, daemon=True).start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    else:
        body = b'{"choices": [{"message": {"content": "\xff\xfe A"}}]}' if fault == "not utf-8" else b'{"choi'
        url = servers(lambda h, c: send(h, 200, body, length=len(body) + (50 if fault == "truncated" else 0))).url
    judge = LLMJudge(url, "m", max_retries=1, backoff=0.01, timeout=2, progress=False)
    try:
        with pytest.raises(PLEError, match="failed 2 times \\(last: "):
            judge.judge(["p"], ["a"], ["b"])
    finally:
        if fault == "not http":
            listener.close()


def test_the_cache_is_keyed_by_endpoint_and_model(servers, tmp_path):
    broken = servers(lambda h, c: send(h, 200, chat("I am a broken endpoint")))
    fixed = servers(lambda h, c: send(h, 200, chat(verdict_for(c))))
    cache = tmp_path / "cache.jsonl"
    assert LLMJudge(broken.url, "m", cache_path=cache, progress=False).judge(["p"], ["GOOD"], ["bad"]) == [UNSCORED]
    judge = LLMJudge(fixed.url, "m", cache_path=cache, progress=False)
    assert judge.judge(["p"], ["GOOD"], ["bad"]) == ["first"] and judge.stats["cached"] == 0
    other_model = LLMJudge(fixed.url, "m2", cache_path=cache, progress=False)
    assert other_model.judge(["p"], ["GOOD"], ["bad"]) == ["first"] and other_model.stats["cached"] == 0


def test_the_re_ask_differs_and_a_cut_off_reply_is_no_verdict(servers, tmp_path):
    def respond(handler, content):
        if content.endswith(REMINDER):
            send(handler, 200, chat("B"))
        else:
            send(handler, 200, chat("Let me think about A", finish_reason="length"))  # cut off mid-way

    server = servers(respond)
    judge = LLMJudge(server.url, "m", max_tokens=64, progress=False)
    assert judge.judge(["p"], ["a"], ["b"]) == ["second"]
    first, second = (r["body"] for r in server.requests)
    assert second["messages"][0]["content"] == first["messages"][0]["content"] + REMINDER
    assert first["max_tokens"] == 64 and judge.stats["cut_off"] == 1


def test_a_server_that_queues_one_request_at_a_time_gets_no_retry_storm(servers):
    """Each request takes 0.25 s and the server answers one at a time, so the fourth of four concurrent requests
    waits 1 s, past the 0.6 s timeout. The client drops to one request in flight after the first timeout."""

    def slow(handler, content):
        time.sleep(0.25)
        try:
            send(handler, 200, chat(verdict_for(content)))
        except OSError:
            pass  # the client gave up on this one

    server = servers(slow, threaded=False)
    judge = LLMJudge(server.url, "m", concurrency=4, timeout=0.6, backoff=0.3, progress=False)
    prompts = [f"p{i}" for i in range(6)]
    assert both_orders(judge, prompts, ["GOOD"] * 6, ["bad"] * 6) == ["win"] * 6
    assert judge.stats["requests"] <= 12 + 4, judge.stats  # 12 judgements; a storm would be many more


def test_ple_eval_judges_with_a_real_transformers_serve(tmp_path, tiny_chat_model, capsys):
    """`ple eval --compare --judge llm` end to end against `transformers serve` (the `transformers[serving]`
    extra) serving the tiny model on 127.0.0.1: the protocol works with a real OpenAI-compatible server."""
    import subprocess
    import sys
    import urllib.request

    from ple.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", tiny_chat_model]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError(f"transformers serve did not start: {server.stderr.read1(4000)!r}")
        a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        a.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "good fun"}) + "\n" for i in range(3)))
        b.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": "bad"}) + "\n" for i in range(3)))
        url = f"http://127.0.0.1:{port}/v1"
        args = ["eval", "--compare", str(a), str(b), "--judge", "llm", "--judge-url", url]
        args += ["--judge-model", tiny_chat_model, "--judge-max-tokens", "8", "--output-dir", str(tmp_path / "out")]
        code = main(args)
    finally:
        server.terminate()
        server.wait(timeout=30)
    err = capsys.readouterr().err
    requests = int(re.search(r"judge: (\d+) requests", err)[1])
    assert 6 <= requests <= 12  # 6 judgements (both orders), each asked at most twice
    if code == 2:  # a random-weight model seldom ends its reply in A or B: no verdict, never a tie
        assert "the judge gave no verdict on any of the 3 pairs" in err
        return
    assert code == 0
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert result["n_prompts"] + result["unscored"] == 3
    assert sum(result["rates"][k]["value"] for k in ("win", "tie", "loss")) == pytest.approx(1.0)


def test_a_judge_whose_replies_name_neither_answer_gives_no_verdict_not_a_tie(servers, tmp_path):
    """Replies ending in "C" are no verdict: the pairs are left out and said so, never counted as ties."""
    from ple.evaluation.pairwise import judge_pair

    server = servers(lambda h, c: send(h, 200, chat("Both are fine.\nC")))
    judge = LLMJudge(server.url, "m", cache_path=tmp_path / "cache.jsonl", progress=False)
    a = {"p": {"prompt": "p", "completion": "good"}, "q": {"prompt": "q", "completion": "fun"}}
    b = {"p": {"prompt": "p", "completion": "bad"}, "q": {"prompt": "q", "completion": "dull"}}
    with pytest.raises(PLEError):  # every pair left out: nothing to compare, in one line
        judge_pair(a, b, judge, "A", "B", tmp_path / "out")


@pytest.mark.parametrize(
    "body, said",
    [
        (b"<html><body>502 Bad Gateway from nginx</body></html>", "502 Bad Gateway from nginx"),
        ({"error": {"message": "model overloaded, try later"}}, "model overloaded, try later"),
    ],
)
def test_a_200_reply_that_is_not_a_chat_completion_quotes_the_server(servers, body, said):
    server = servers(lambda h, c: send(h, 200, body))
    judge = LLMJudge(server.url, "m", backoff=0.01, max_retries=1, timeout=2, progress=False)
    with pytest.raises(PLEError, match=f"failed 2 times \\(last: a reply that is not a chat completion: .*{said}"):
        judge.judge(["p"], ["a"], ["b"])


def test_a_server_that_answers_nothing_ends_the_judging_at_the_longest_wait():
    """A server that accepts every request and never replies: after the first timeouts the client waits up to
    8 x the timeout for one request at a time, and when that wait too passes with no answer from the server
    since the request went out, it stops (before: every request's retries, one at a time, for minutes)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held = []

    def accept():  # every connection kept open and never answered, until the listener closes
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    judge = LLMJudge(url, "m", concurrency=4, timeout=0.2, backoff=0.05, progress=False)
    said = r"answered nothing for \d+ s \(the last request waited 1.6 s, 8 x the timeout\)"
    try:
        with pytest.raises(PLEError, match=said):
            both_orders(judge, [f"p{i}" for i in range(12)], ["a"] * 12, ["b"] * 12)
    finally:
        listener.close()
        for connection in held:
            connection.close()
    # The first wave of 4, then one request at the longest wait; another may have gone out as the first gave up.
    assert judge.stats["requests"] <= 6, judge.stats


SILENT_JUDGING = """
import signal, socket, threading
# Ctrl-C as a terminal delivers it: a test run started in the background by a shell inherits SIGINT ignored, and
# Python then keeps it ignored (the test would wait for the requests' timeout, whatever the code does).
signal.signal(signal.SIGINT, signal.default_int_handler)
from ple.evaluation.judges import LLMJudge, both_orders
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(64)
held = []
def accept():
    try:
        while True:
            held.append(listener.accept()[0])
    except OSError:
        pass
threading.Thread(target=accept, daemon=True).start()
judge = LLMJudge(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "m", concurrency=4, timeout=300.0, progress=False)
print("judging", flush=True)
try:
    both_orders(judge, [f"p{i}" for i in range(8)], ["a"] * 8, ["b"] * 8)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_one_ctrl_c_ends_the_judging_without_waiting_for_the_requests_in_flight():
    """Four requests wait on a server that never answers, with a 300 s timeout. One Ctrl-C ends the process in
    seconds: before, the interpreter waited at exit for the thread pool's threads, so for each request's timeout."""
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", SILENT_JUDGING], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "judging"
    time.sleep(1.0)  # the requests are in flight
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)  # far below the 300 s the requests would wait
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("one Ctrl-C left the judging running for a minute")
    assert process.stdout.read().strip() == "interrupted"
