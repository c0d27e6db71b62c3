"""The pairwise protocol, against a real OpenAI-compatible HTTP server started on 127.0.0.1."""

import re

import pytest
from judge_server import Server, send

from ple.errors import PLEError
from ple.evaluation.judges import UNSCORED, LLMJudge, RewardJudge, both_orders, outcome, parse_verdict


class FakeJudgeServer(Server):
    """Chat-completions endpoint whose behaviour a test picks with `mode`."""

    def __init__(self, mode: str):
        self.mode, self.failures = mode, {}
        super().__init__(lambda handler, content: send(handler, *self.answer(content)))

    def answer(self, content: str):
        first = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", content, re.S).group(1)

        def reply(text):
            return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}

        if self.mode == "first":
            return reply("Both are fine, but the first reads better.\nA")
        if self.mode == "marker":
            return reply("Reasoning...\nVerdict: A" if "MARKER" in first else "Reasoning...\n**B**")
        if self.mode == "malformed":
            return reply("I cannot decide between them.")
        if self.mode == "flaky":  # 429, then 500, then a broken body, then the answer
            seen = self.failures.get(content, 0)
            self.failures[content] = seen + 1
            if seen == 0:
                return 429, {"error": "rate limited"}
            if seen == 1:
                return 500, {"error": "server error"}
            if seen == 2:
                return 200, b"{not json"
            return reply("A" if "MARKER" in first else "B")
        if self.mode == "unauthorized":
            return 401, {"error": "bad key"}
        raise AssertionError(self.mode)


@pytest.fixture
def server(request):
    s = FakeJudgeServer(request.param)
    yield s
    s.close()


PROMPTS = [f"prompt {i}" for i in range(6)]
A = [f"MARKER answer {i}" for i in range(6)]
B = [f"plain answer {i}" for i in range(6)]


def judge_for(server, tmp_path, **kw):
    return LLMJudge(server.url, "judge-model", cache_path=tmp_path / "cache.jsonl", backoff=0.01, **kw)


@pytest.mark.parametrize(
    "a_first, a_second, expected",
    [
        ("first", "second", "win"),
        ("second", "first", "loss"),
        ("first", "first", "tie"),
        ("second", "second", "tie"),
        (None, "second", "tie"),
        (None, None, "tie"),
    ],
)
def test_outcome_table(a_first, a_second, expected):
    assert outcome(a_first, a_second) == expected


@pytest.mark.parametrize("server", ["first"], indirect=True)
def test_position_biased_judge_gives_only_ties(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert both_orders(judge_for(server, tmp_path), PROMPTS, A, B) == ["tie"] * 6
    assert len(server.requests) == 12 and server.requests[0]["path"] == "/v1/chat/completions"
    assert server.requests[0]["auth"] == "Bearer sk-test" and server.requests[0]["body"]["model"] == "judge-model"


@pytest.mark.parametrize("server", ["marker"], indirect=True)
def test_consistent_judge_gives_all_wins_and_a_cache(server, tmp_path):
    assert both_orders(judge_for(server, tmp_path), PROMPTS, A, B) == ["win"] * 6
    assert both_orders(judge_for(server, tmp_path), PROMPTS, B, A) == ["loss"] * 6  # swapping sides: cached
    assert len(server.requests) == 12
    again = judge_for(server, tmp_path)
    assert both_orders(again, PROMPTS, A, B) == ["win"] * 6 and again.stats["cached"] == 12
    assert len(server.requests) == 12  # a rerun pays nothing


@pytest.mark.parametrize("server", ["marker"], indirect=True)
def test_a_cached_reply_holding_a_raw_line_separator_is_one_entry(server, tmp_path):
    """A cache written by another JSON writer (ensure_ascii off) may hold U+2028 raw inside a reply: str.splitlines
    would cut that entry in two and the rerun would pay for it again."""
    import json

    assert both_orders(judge_for(server, tmp_path), PROMPTS, A, B) == ["win"] * 6
    cache = tmp_path / "cache.jsonl"
    entries = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    rewritten = [{**e, "reply": e["reply"].replace("...", "...\u2028")} for e in entries]
    cache.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in rewritten), encoding="utf-8")
    assert "\u2028" in cache.read_text(encoding="utf-8")
    again = judge_for(server, tmp_path)
    assert both_orders(again, PROMPTS, A, B) == ["win"] * 6 and again.stats["cached"] == 12
    assert len(server.requests) == 12


@pytest.mark.parametrize("server", ["malformed"], indirect=True)
def test_malformed_replies_are_counted_retried_once_and_never_guessed(server, tmp_path):
    judge = judge_for(server, tmp_path)
    assert both_orders(judge, PROMPTS[:2], A[:2], B[:2]) == [UNSCORED, UNSCORED]  # no verdict, never a tie
    assert judge.stats["unparseable"] == 8 and judge.stats["failed"] == 4  # 4 judgements, each asked twice
    assert len(server.requests) == 8


@pytest.mark.parametrize("server", ["flaky"], indirect=True)
def test_429_500_and_broken_bodies_are_retried_with_backoff(server, tmp_path):
    judge = judge_for(server, tmp_path)
    assert both_orders(judge, PROMPTS[:3], A[:3], B[:3]) == ["win"] * 3
    assert judge.stats["retries"] == 18  # 3 failures before each of the 6 answers


@pytest.mark.parametrize("server", ["flaky"], indirect=True)
def test_retries_run_out_with_a_clear_error(server, tmp_path):
    judge = judge_for(server, tmp_path, max_retries=1)
    with pytest.raises(PLEError, match="failed 2 times \\(last: HTTP 500\\)"):
        judge.judge(PROMPTS[:1], A[:1], B[:1])


@pytest.mark.parametrize("server", ["unauthorized"], indirect=True)
def test_client_errors_are_not_retried(server, tmp_path):
    with pytest.raises(PLEError, match="answered HTTP 401"):
        judge_for(server, tmp_path).judge(PROMPTS[:1], A[:1], B[:1])
    assert len(server.requests) == 1


def test_unreachable_endpoint(tmp_path):
    judge = LLMJudge("http://127.0.0.1:9/v1", "m", backoff=0.01, max_retries=1, timeout=2)
    with pytest.raises(PLEError, match="failed 2 times"):
        judge.judge(["p"], ["a"], ["b"])


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("A", "first"),
        ("reasoning\n\nB", "second"),
        ("Verdict: b.", "second"),
        ("**A**", "first"),
        ("A or B", None),
        ("", None),
        ("The answer is A", None),
        ("A\nmore text", None),
    ],
)
def test_parse_verdict_is_strict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_reward_judge_with_tie_margin():
    def length(prompts, completions, **_):
        return [float(len(c)) for c in completions]

    judge = RewardJudge(length, tie_margin=1.0)
    assert both_orders(judge, ["p"] * 3, ["long answer", "ab", "abc"], ["short", "abc", "abcdefgh"]) == [
        "win",
        "tie",
        "loss",
    ]


def test_a_judge_that_refuses_connections_stops_after_one_requests_retries():
    """40 pairs in both orders against a port nothing listens on: the first request to give up stops the others,
    so at most the requests in flight at that moment are retried (4 x 4 attempts), not each of the 80 judgements
    (80 x 4 x 2), which took 77 s before."""
    judge = LLMJudge("http://127.0.0.1:9/v1", "m", backoff=0.01, max_retries=3, timeout=2, progress=False)
    with pytest.raises(PLEError, match="failed 4 times \\(last: a broken connection"):
        both_orders(judge, [f"p{i}" for i in range(40)], ["a"] * 40, ["b"] * 40)
    assert judge.stats["requests"] <= 4 * 4
