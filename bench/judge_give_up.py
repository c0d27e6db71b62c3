"""How long the LLM judge client takes to give up on a judge it cannot use, with the hostile pass's settings:
40 prompts judged in both orders (80 requests), 8 in flight, `--judge-timeout 2`, 3 retries.

    python bench/judge_give_up.py

Two judges, both on 127.0.0.1: a port nothing listens on (connection refused), and a server that accepts every
request and never answers. The bound it should meet: refused, a few seconds (one request's retries with their
backoff); silent, about the sum of one request's timeouts (2 + 4 + 8 + 16 s with the doubling after a timeout).
Each case prints its wall time and the one line the client ends with.
"""

import socket
import threading
import time

from ple.errors import PLEError
from ple.evaluation.judges import LLMJudge, both_orders

PROMPTS = [f"prompt {i}" for i in range(40)]


def silent_server() -> tuple[str, socket.socket]:
    """A server that accepts connections and reads requests but never replies."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    held = []

    def accept():
        while True:
            try:
                held.append(listener.accept()[0])  # kept open, never answered
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1", listener


def refused_url() -> str:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def give_up(url: str) -> tuple[float, str]:
    judge = LLMJudge(url, "m", concurrency=8, timeout=2.0, max_retries=3, progress=False)
    started = time.perf_counter()
    try:
        both_orders(judge, PROMPTS, ["a"] * len(PROMPTS), ["b"] * len(PROMPTS))
        line = "finished (no failure?)"
    except PLEError as e:
        line = str(e)
    return time.perf_counter() - started, line


def main() -> None:
    seconds, line = give_up(refused_url())
    print(f"connection refused: gave up after {seconds:.1f} s: {line}", flush=True)
    url, listener = silent_server()
    seconds, line = give_up(url)
    listener.close()
    print(f"never answers (timeout 2 s): gave up after {seconds:.1f} s: {line}", flush=True)


if __name__ == "__main__":
    main()
