"""`charlm serve` under a bounded load, every part real: a run trained by `charlm train`, the
server a subprocess (`charlm serve RUN --port 0`, its address read from its stderr), clients
over loopback.

  - nothing lost: 16 clients x 5 requests each, streamed and not, seeded, some with a stop
    string, all at once: every response is complete (HTTP 200, [DONE] last for a stream, one
    finish reason per choice, the completion token count matching the text and max_tokens);
  - a seed fixes the text: the same request gives the same text alone, streamed or not, and
    among 15 other streams with other settings, joining them at once or while they run;
  - a client that closes its connection mid-stream frees its slot: with --max-concurrent 2 and
    two long streams a third request gets 429; after one connection closes a new request
    succeeds within a few seconds (and so does one after a client waiting for a whole,
    not streamed, completion goes away);
  - memory stays flat: the server's RSS (VmRSS) after five more identical rounds of that load
    is within 4 MB of its RSS after the first, and every round's texts are the first's;
  - SIGTERM ends a stream in flight (finish reason "abort", then [DONE]) and the server exits 0
    within a few seconds; the server under load is stopped the same way at the end, also
    asserting exit code 0.

The load is fixed (no time limit decides when it stops), so the test is the same on a slow
machine, only slower; the whole file takes about 20 s on two cores.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import REPO, child_env

pytestmark = pytest.mark.slow  # real charlm processes, as the other tests that start them

WORDS = "the quick brown fox jumps over a lazy dog and then runs home to sleep".split()
URL_LINE = re.compile(r"serving .* on (http://127\.0\.0\.1:(\d+))")
CLIENTS, REQUESTS = 16, 5
# RSS after the first round (which warms the server up) against after MORE_ROUNDS identical ones: it grows
# by well under 0.1 MB here, so 4 MB catches a leak of 10 kB per request while leaving room for allocator noise
MORE_ROUNDS = 5
RSS_TOLERANCE_KB = 4 * 1024


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-load")


@pytest.fixture(scope="module")
def run_dir(folder) -> Path:
    """A one-layer LSTM of width 32 trained for 30 steps on a small text of words (a few seconds)."""
    corpus = folder / "words.txt"
    lines = (" ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(12)) for i in range(300))
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = folder / "run"
    command = [
        sys.executable, "-m", "charlm", "train", "--data", str(corpus), "--out", str(run), "--max-steps", "30",
        "--layers", "1", "--hidden", "32", "--seq-len", "32", "--batch-size", "8", "--sample-length", "0",
        "--threads", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=child_env(folder / "data"), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run


class ServeProcess:
    """`charlm serve` in a subprocess: its URL, its RSS, its stderr, and a SIGTERM stop."""

    def __init__(self, run: Path, data_dir: Path, *options: str):
        command = [sys.executable, "-m", "charlm", "serve", f"tiny={run}", "--port", "0", "--threads", "1", *options]
        self.proc = subprocess.Popen(command, cwd=REPO, env=child_env(data_dir), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.lines: list[str] = []
        found: queue.Queue = queue.Queue()
        threading.Thread(target=self._drain, args=(found,), daemon=True).start()
        try:
            self.url, self.port = found.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError("charlm serve did not say where it listens:\n" + self.stderr()) from None
        assert self.url is not None, "charlm serve ended before listening:\n" + self.stderr()

    def _drain(self, found: queue.Queue) -> None:
        told = False
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = URL_LINE.search(line)
            if match and not told:
                found.put((match.group(1), int(match.group(2))))
                told = True
        if not told:
            found.put((None, None))

    def stderr(self) -> str:
        return "\n".join(self.lines[-40:])

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then its exit code within timeout (killed and an AssertionError past it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"charlm serve did not exit within {timeout} s of SIGTERM:\n{self.stderr()}") from None


@pytest.fixture(scope="module")
def server(run_dir, folder):
    serving = ServeProcess(run_dir, folder / "data", "--max-concurrent", "64", "--max-tokens", "100000000")
    yield serving
    assert serving.terminate(timeout=5) == 0, serving.stderr()


# ----- the clients ------------------------------------------------------------------------


def body_of(i: int) -> dict:
    """Request i of a round: streamed or not, its own seed and length, a stop string on some."""
    body = {"model": "tiny", "prompt": "the ", "max_tokens": 20 + 10 * (i % 4), "seed": 1000 + i, "temperature": 1.0,
            "stream": i % 2 == 0}  # fmt: skip
    if i % 5 == 3:
        body["stop"] = " "  # a word ends soon: finish reason "stop", mostly
    return body


async def send(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """One completion, streamed or not, checked complete; its text, finish reason and token count."""
    if not body.get("stream"):
        response = await client.post(f"{url}/v1/completions", json=body)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert len(reply["choices"]) == 1
        choice = reply["choices"][0]
        return check(body, choice["text"], choice["finish_reason"], reply["usage"]["completion_tokens"])
    texts, finishes, usage, payloads = [], [], None, []
    wanted = {**body, "stream_options": {"include_usage": True}}  # the token count comes in a last chunk
    async with client.stream("POST", f"{url}/v1/completions", json=wanted) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                payloads.append(line[6:])
    assert payloads and payloads[-1] == "[DONE]", f"the stream did not end with [DONE]: {payloads[-3:]}"
    assert payloads.count("[DONE]") == 1
    for payload in payloads[:-1]:
        chunk = json.loads(payload)
        assert "error" not in chunk, chunk
        if chunk.get("usage"):
            assert chunk["choices"] == []
            usage = chunk["usage"]
            continue
        assert usage is None, "a chunk came after the usage chunk"
        (choice,) = chunk["choices"]
        assert not finishes, "a chunk came after the choice's finish reason"
        texts.append(choice["text"])
        if choice["finish_reason"] is not None:
            finishes.append(choice["finish_reason"])
    assert len(finishes) == 1 and usage is not None, (finishes, usage)
    return check(body, "".join(texts), finishes[0], usage["completion_tokens"])


def check(body: dict, text: str, finish: str, tokens: int) -> dict:
    """A complete completion: the char tokenizer makes one character a token."""
    stop = body.get("stop")
    if finish == "length":
        assert tokens == body["max_tokens"] and len(text) == tokens, (body, text, tokens)
    else:
        assert finish == "stop" and stop, (body, finish)
        assert tokens <= body["max_tokens"] and len(text) == tokens - len(stop), (body, text, tokens)
    if stop:
        assert stop not in text
    return {"text": text, "finish": finish, "tokens": tokens}


async def one_round(url: str) -> list[dict]:
    """CLIENTS clients at once, each sending REQUESTS requests one after another; results in request order."""

    async def client_loop(http: httpx.AsyncClient, c: int) -> list[dict]:
        return [await send(http, url, body_of(c * REQUESTS + r)) for r in range(REQUESTS)]

    limits = httpx.Limits(max_connections=CLIENTS + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        results = await asyncio.gather(*(client_loop(http, c) for c in range(CLIENTS)))
    return [result for mine in results for result in mine]


def open_stream(port: int, body: dict) -> socket.socket:
    """A streamed completion on a raw socket, returned once its first event has arrived."""
    data = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    received = b""
    while b"data: " not in received:
        piece = sock.recv(65536)
        assert piece, f"the server closed the stream before its first event: {received!r}"
        received += piece
    assert received.startswith(b"HTTP/1.1 200"), received[:300]
    return sock


# ----- the tests --------------------------------------------------------------------------


def test_load_loses_nothing_and_memory_stays_flat(server):
    first = asyncio.run(one_round(server.url))  # the first round also warms the server up
    after_first = server.rss_kb()
    assert len(first) == CLIENTS * REQUESTS
    assert {r["finish"] for r in first} == {"length", "stop"}  # the stop strings were met, and the lengths
    for _ in range(MORE_ROUNDS):
        again = asyncio.run(one_round(server.url))
        assert [r["text"] for r in again] == [r["text"] for r in first]  # the seeds decide, not the neighbours
    after_more = server.rss_kb()
    assert after_more - after_first <= RSS_TOLERANCE_KB, (
        f"the server's RSS grew {after_more - after_first} kB over {MORE_ROUNDS} more identical rounds of "
        f"{CLIENTS * REQUESTS} requests ({after_first} kB -> {after_more} kB)"
    )


def test_the_same_seed_gives_the_same_text_alone_or_among_others(server):
    mine = {"model": "tiny", "prompt": "a lazy ", "max_tokens": 60, "seed": 4242, "temperature": 1.0, "top_k": 10}

    def neighbour(i: int) -> dict:
        settings = [{"temperature": 0.7}, {"greedy": True}, {"top_p": 0.9}, {"temperature": 1.3, "top_k": 5}][i % 4]
        return {"model": "tiny", "prompt": ["the ", "dog ", "", "home and "][i % 4], "max_tokens": 40 + 40 * i,
                "seed": 77 + i, "stream": i % 3 != 0, **settings}  # fmt: skip

    async def scenario() -> tuple[str, str, str, str]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as http:
            alone = (await send(http, server.url, {**mine, "stream": True}))["text"]
            alone_whole = (await send(http, server.url, mine))["text"]
            # at once with 15 others
            together = await asyncio.gather(
                send(http, server.url, {**mine, "stream": True}), *(send(http, server.url, neighbour(i)) for i in range(15))
            )  # fmt: skip
            # joining 15 others that are already running
            others = [asyncio.ensure_future(send(http, server.url, neighbour(i))) for i in range(15)]
            await asyncio.sleep(0.05)
            assert not all(o.done() for o in others), "the 15 others ended before the late request was sent"
            late = await send(http, server.url, {**mine, "stream": True})
            await asyncio.gather(*others)
            return alone, alone_whole, together[0]["text"], late["text"]

    alone, alone_whole, among, joined_late = asyncio.run(scenario())
    assert len(alone) == 60
    assert alone_whole == alone
    assert among == alone
    assert joined_late == alone


def post_until(url: str, body: dict, status: int, seconds: float = 5.0) -> httpx.Response:
    """POST a completion again and again until it gets `status`, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        answer = httpx.post(f"{url}/v1/completions", json=body, timeout=10)
        if answer.status_code == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_a_client_that_disconnects_frees_its_slot(run_dir, folder):
    serving = ServeProcess(run_dir, folder / "data", "--max-concurrent", "2", "--max-tokens", "100000000")
    long = {"model": "tiny", "prompt": "the ", "max_tokens": 100_000_000, "seed": 1}
    quick = {"model": "tiny", "prompt": "the ", "max_tokens": 5, "seed": 2}
    try:
        first = open_stream(serving.port, long)
        second = open_stream(serving.port, {**long, "seed": 3})
        refused = httpx.post(f"{serving.url}/v1/completions", json=quick, timeout=10)
        assert refused.status_code == 429, refused.text  # both slots are taken
        assert refused.json()["error"]["type"] == "rate_limit_error"
        first.close()
        answer = post_until(serving.url, quick, 200)
        assert answer.status_code == 200, f"5 s after a client went away its slot is still taken: {answer.text}"
        assert answer.json()["choices"][0]["finish_reason"] == "length"
        second.close()
        both = post_until(serving.url, {**quick, "n": 2}, 200)  # n=2: two streams, both slots
        assert both.status_code == 200, both.text
        assert [c["finish_reason"] for c in both.json()["choices"]] == ["length", "length"]

        # a client waiting for a whole (not streamed) completion that goes away frees its slots too
        waiting = socket.create_connection(("127.0.0.1", serving.port), timeout=10)
        data = json.dumps({**long, "n": 2}).encode()
        waiting.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)  # fmt: skip
        taken = post_until(serving.url, quick, 429)
        assert taken.status_code == 429, f"the whole completion of n=2 did not take the two slots: {taken.text}"
        waiting.close()
        both = post_until(serving.url, {**quick, "n": 2}, 200)
        assert both.status_code == 200, f"5 s after a waiting client went away: {both.text}"
    finally:
        assert serving.terminate(timeout=10) == 0, serving.stderr()


def test_sigterm_ends_the_streams_in_flight_and_exits_zero(run_dir, folder):
    server = ServeProcess(run_dir, folder / "data", "--max-tokens", "100000000")
    sock = open_stream(server.port, {"model": "tiny", "prompt": "the ", "max_tokens": 100_000_000, "seed": 9})
    sock.settimeout(10)
    server.proc.send_signal(signal.SIGTERM)
    received = b""
    while b"data: [DONE]" not in received:
        piece = sock.recv(65536)
        assert piece, f"the stream was cut without [DONE]: {received[-500:]!r}"
        received += piece
    sock.close()
    assert server.terminate(timeout=5) == 0, server.stderr()
    events = re.findall(rb"data: (.+)\n\n", received)
    assert events[-1] == b"[DONE]", received[-500:]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "abort", events[-2]
