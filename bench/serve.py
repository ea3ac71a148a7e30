"""`charlm serve` under load on loopback: aggregate tokens/s, time to first token, inter-token time.

The model: by default a run trained here in a temporary folder with `charlm train` at its default
shape (2x384 LSTM, embed 64: --no-auto-size keeps the budget rule from choosing another) for
--train-steps steps on tiny Shakespeare (any text without ../shared); only the speed matters, so
a few steps are enough. --run DIR serves an existing run instead. The server is a real
subprocess, `charlm serve RUN --port 0 --threads T --max-concurrent 512`, its address read from
its stderr line "serving ... on http://127.0.0.1:PORT ...".

For each level C of --clients, C clients stream at once, each sending --requests requests one
after another (max_tokens --max-tokens, the prompt --prompt, temperature 1, a seed per request).
Measured per level: the aggregate rate (completion tokens received over the level's wall time),
time to first token (TTFT, from opening the connection to the first text chunk: median and p95),
the inter-token time (ITL: each request's time per token after its first, (last chunk - first
chunk) / (chunks - 1), median and p95 over the requests; all streams advance in one batched
step, so this is the server's step time at that batch), the raw gaps between consecutive chunks
(median; near 0 when the client reads several chunks at once, which is why ITL is not taken from
them), and the CPU seconds of the server, of this client and of other processes. Then the same
C x R requests (the same bodies and seeds) are sent one at a time: the sequential rate, the
ratio concurrent/sequential, and whether every text came out the same (a stream's text must not
depend on its neighbours). Last, a join pass, not timed for the rates: every client's first
request at once again and, once each has its first token, --probes requests of one token sent
one after another: "join" is their TTFT median, a new request joining C running streams (the
level's own TTFT also counts the wait for the other prompts of a burst of C arriving at once).

Targets: at 32 clients at least 5x the aggregate rate of one client; at every level a new
request's first token within two steps (TTFT median <= 2 x the inter-token median). Every
request must end complete: HTTP 200, finish_reason "length" with exactly --max-tokens completion
tokens (usage, from stream_options.include_usage; for a char tokenizer also as many characters
received) or "stop" with at most that many, and [DONE].

The client is asyncio's raw streams (asyncio.open_connection, an HTTP/1.1 POST with
Content-Length and Connection: close, the chunked SSE body read chunk by chunk), one coroutine
per client in this one process, timed with time.perf_counter; its CPU time is printed beside the
server's so a client that competes for the cores shows.

    python bench/serve.py [--run DIR] [--clients 1,8,32,128] [--requests 2] [--max-tokens 200]
        [--threads 2] [--probes 5] [--train-steps 20] [--prompt TEXT] [--device auto|cpu|cuda]
        [--json bench/results/serve/<time>.json]
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional

import budget_report
import common
from common import REPO

URL_LINE = re.compile(r"serving .* on http://([0-9.]+):([0-9]+)")
TARGET_SPEEDUP_AT = 32
TARGET_SPEEDUP = 5.0
TARGET_TTFT_STEPS = 2.0
PROBE_SEED = 900_000
CHAR_TOKENS = False  # the served model's tokenizer is char: a token is one character, counted by the client too


@dataclass
class Outcome:
    """One request as the client saw it."""

    seed: int
    status: Optional[int] = None
    sent: float = 0.0
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk holding text
    text: list[str] = field(default_factory=list)
    finish: Optional[str] = None
    usage_tokens: Optional[int] = None
    done: bool = False
    error: Optional[str] = None
    ended: float = 0.0

    @property
    def ttft(self) -> Optional[float]:
        return self.chunk_times[0] - self.sent if self.chunk_times else None

    def problem(self, max_tokens: int) -> Optional[str]:
        """Why this request is not complete, or None."""
        if self.error:
            return self.error
        if self.status != 200:
            return f"HTTP {self.status}"
        if not self.done:
            return "no [DONE]"
        if self.usage_tokens is None:
            return "no usage chunk"
        if self.finish == "length" and self.usage_tokens != max_tokens:
            return f"finish length after {self.usage_tokens} of {max_tokens} tokens"
        if self.finish == "stop" and self.usage_tokens > max_tokens:
            return f"finish stop after {self.usage_tokens} > {max_tokens} tokens"
        if self.finish not in ("length", "stop"):
            return f"finish_reason {self.finish!r}"
        received = sum(len(t) for t in self.text)
        if CHAR_TOKENS and self.finish == "length" and received != self.usage_tokens:
            return f"{received} characters received for {self.usage_tokens} tokens of a char tokenizer"
        return None


class EventReader:
    """Splits a server-sent event body into data payloads as its bytes arrive."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome
        self.buffer = b""

    def feed(self, data: bytes, now: float) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    self.take(line[6:], now)

    def take(self, payload: bytes, now: float) -> None:
        out = self.outcome
        if payload == b"[DONE]":
            out.done = True
            return
        message = json.loads(payload)
        if "error" in message:
            out.error = f"error event: {message['error'].get('message')}"
            return
        for choice in message.get("choices") or ():
            if choice.get("text"):
                out.text.append(choice["text"])
                out.chunk_times.append(now)
            if choice.get("finish_reason"):
                out.finish = choice["finish_reason"]
        if message.get("usage"):
            out.usage_tokens = message["usage"]["completion_tokens"]


async def http(host: str, port: int, method: str, path: str, body: bytes = b"", sink=None) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange on a fresh connection: the status and the body (or, with sink,
    each piece of the body handed to sink(data, perf_counter()) as it arrives)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = []
        give = sink or (lambda data, now: parts.append(data))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    break
                data = await reader.readexactly(size)
                give(data, time.perf_counter())
                await reader.readexactly(2)
        elif "content-length" in headers:
            give(await reader.readexactly(int(headers["content-length"])), time.perf_counter())
        else:
            give(await reader.read(), time.perf_counter())
        return status, b"".join(parts)
    finally:
        writer.close()


def completion_body(model: str, prompt: str, max_tokens: int, seed: int) -> bytes:
    return json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "seed": seed,
        "stream": True, "stream_options": {"include_usage": True},
    }).encode()  # fmt: skip


async def stream_once(host: str, port: int, body: bytes, out: Outcome) -> Outcome:
    events = EventReader(out)
    out.sent = time.perf_counter()
    try:
        out.status, _ = await http(host, port, "POST", "/v1/completions", body, sink=events.feed)
        if out.status != 200:  # an error object, no event in it: the reader kept it whole
            out.error = f"HTTP {out.status}: {events.buffer[:300].decode(errors='replace')}"
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    out.ended = time.perf_counter()
    return out


class CpuClock:
    """CPU seconds of the server process, of this process, and of the whole machine (Linux)."""

    def __init__(self, server_pid: int):
        self.pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> tuple[float, float, float, float]:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / self.tick  # utime, stime (all its threads)
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:8]]
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / self.tick
        return time.perf_counter(), server, time.process_time(), busy

    @staticmethod
    def spent(before, after) -> dict:
        wall = after[0] - before[0]
        server, client, busy = (after[i] - before[i] for i in (1, 2, 3))
        return {"server_cpu_s": round(server, 2), "client_cpu_s": round(client, 2),
                "other_cores": round(max(0.0, (busy - server - client) / wall), 2) if wall > 0 else None}  # fmt: skip


def quantile(values: list[float], q: float) -> Optional[float]:
    """The q-quantile by linear interpolation (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ms(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value * 1000, 3)


def summarize(outcomes: list[Outcome], wall: float, max_tokens: int) -> dict:
    tokens = sum(o.usage_tokens or 0 for o in outcomes)
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    gaps = [b - a for o in outcomes for a, b in zip(o.chunk_times, o.chunk_times[1:])]
    per_request = [  # a request's time per token after its first: reads of several chunks at once do not bias it
        (o.chunk_times[-1] - o.chunk_times[0]) / (len(o.chunk_times) - 1) for o in outcomes if len(o.chunk_times) > 1
    ]
    problems = [(o.seed, o.problem(max_tokens)) for o in outcomes if o.problem(max_tokens)]
    return {
        "requests": len(outcomes),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "ttft_median_ms": ms(quantile(ttfts, 0.5)),
        "ttft_p95_ms": ms(quantile(ttfts, 0.95)),
        "itl_median_ms": ms(quantile(per_request, 0.5)),
        "itl_p95_ms": ms(quantile(per_request, 0.95)),
        "gap_median_ms": ms(quantile(gaps, 0.5)),
        "gap_p95_ms": ms(quantile(gaps, 0.95)),
        "complete": len(outcomes) - len(problems),
        "problems": [{"seed": seed, "problem": why} for seed, why in problems[:20]],
        "finish_reasons": {r: sum(o.finish == r for o in outcomes) for r in sorted({str(o.finish) for o in outcomes})},
    }


async def run_level(host, port, bodies: list[list[tuple[int, bytes]]], clock: CpuClock, max_tokens: int,
                    probe_body=None, probes: int = 0) -> tuple:  # fmt: skip
    """Every client's requests, the clients at once; (summary, outcomes in request order).

    With probes, one more coroutine waits until every client has its first token, then sends
    up to `probes` requests of one token, one after another, while the clients' streams run
    (summary["joined"]): the time to first token of a request joining a running batch, where
    a burst of C new requests at once also waits for the C prompts to be read."""
    outcomes = [[Outcome(seed) for seed, _ in mine] for mine in bodies]
    finished = asyncio.Event()

    async def client(mine: list[tuple[int, bytes]], outs: list[Outcome]) -> None:
        for (_, body), out in zip(mine, outs):
            await stream_once(host, port, body, out)

    async def everyone() -> None:
        await asyncio.gather(*(client(mine, outs) for mine, outs in zip(bodies, outcomes)))
        finished.set()

    async def prober() -> list[Outcome]:
        while not all(outs[0].chunk_times or outs[0].ended for outs in outcomes) and not finished.is_set():
            await asyncio.sleep(0.001)
        joined = []
        for i in range(probes):
            if finished.is_set():
                break
            out = await stream_once(host, port, probe_body(PROBE_SEED + i), Outcome(PROBE_SEED + i))
            if not finished.is_set():  # it joined streams that were still running
                joined.append(out)
        return joined

    before = clock.read()
    started = time.perf_counter()
    _, joined = await asyncio.gather(everyone(), prober())
    wall = time.perf_counter() - started
    flat = [o for outs in outcomes for o in outs]
    summary = {**summarize(flat, wall, max_tokens), **CpuClock.spent(before, clock.read())}
    summary["joined"] = joined
    return summary, flat


async def run_join(host, port, bodies: list[list[tuple[int, bytes]]], clock: CpuClock, max_tokens: int,
                   probe_body, probes: int) -> dict:  # fmt: skip
    """A pass of its own (the probes' priming would slow the measured one): every client's
    first request at once, and the probes joining them; the probes' time to first token."""
    summary, _ = await run_level(host, port, [mine[:1] for mine in bodies], clock, max_tokens, probe_body, probes)
    joined = summary["joined"]
    problems = [{"seed": o.seed, "problem": o.problem(1)} for o in joined if o.problem(1)] + summary["problems"]
    ttfts = [o.ttft for o in joined if o.ttft is not None]
    return {"join_probes": len(joined), "join_ttft_median_ms": ms(quantile(ttfts, 0.5)),
            "join_ttft_max_ms": ms(max(ttfts, default=None)), "join_problems": problems}  # fmt: skip


async def run_sequential(host, port, bodies: list[tuple[int, bytes]], clock: CpuClock, max_tokens: int) -> tuple:
    before = clock.read()
    started = time.perf_counter()
    outcomes = [await stream_once(host, port, body, Outcome(seed)) for seed, body in bodies]
    wall = time.perf_counter() - started
    return {**summarize(outcomes, wall, max_tokens), **CpuClock.spent(before, clock.read())}, outcomes


async def measure(host: str, port: int, model: str, args, clock: CpuClock) -> list[dict]:
    levels = []
    warm = [(s, completion_body(model, args.prompt, min(args.max_tokens, 50), s)) for s in range(8)]
    await run_sequential(host, port, warm[:2], clock, 50)  # the first requests pay for lazy set-up
    await run_level(host, port, [[w] for w in warm], clock, 50)
    for clients in args.clients:
        bodies = [
            [(seed, completion_body(model, args.prompt, args.max_tokens, seed))
             for seed in range(clients * 1000 + c * args.requests, clients * 1000 + (c + 1) * args.requests)]
            for c in range(clients)
        ]  # fmt: skip
        concurrent, together = await run_level(host, port, bodies, clock, args.max_tokens)
        del concurrent["joined"]
        if args.probes:
            probe = lambda seed: completion_body(model, args.prompt, 1, seed)  # noqa: E731
            concurrent.update(await run_join(host, port, bodies, clock, args.max_tokens, probe, args.probes))
        else:
            concurrent.update(join_probes=0, join_ttft_median_ms=None, join_ttft_max_ms=None, join_problems=[])
        in_order = [pair for mine in bodies for pair in mine]
        sequential, alone = await run_sequential(host, port, in_order, clock, args.max_tokens)
        same = sum("".join(a.text) == "".join(b.text) for a, b in zip(together, alone))
        level = {"clients": clients, **concurrent, "sequential": sequential, "same_text_as_sequential": same}
        if concurrent["tokens_per_s"] and sequential["tokens_per_s"]:
            level["vs_sequential"] = round(concurrent["tokens_per_s"] / sequential["tokens_per_s"], 2)
        levels.append(level)
        print_level(level, levels[0] if levels[0]["clients"] == 1 else None)
    return levels


HEADER = (
    f"{'clients':>7} {'reqs':>5} {'tokens':>7} {'wall s':>7} {'tok/s':>8} {'vs 1':>6} {'seq tok/s':>9} {'vs seq':>6} "
    f"{'TTFT med':>8} {'TTFT p95':>8} {'join':>6} {'ITL med':>7} {'ITL p95':>7} {'gap med':>7} {'complete':>9} {'same':>5} "
    f"{'srv cpu':>7} {'cli cpu':>7} {'other':>5}"
)


def print_level(level: dict, one: Optional[dict]) -> None:
    if one and one["tokens_per_s"] and level["tokens_per_s"]:
        level["vs_one_client"] = round(level["tokens_per_s"] / one["tokens_per_s"], 2)
    seq = level["sequential"]
    print(
        f"{level['clients']:>7} {level['requests']:>5} {level['tokens']:>7} {level['wall_s']:>7.2f} "
        f"{level['tokens_per_s'] or 0:>8,.0f} {level.get('vs_one_client', 0):>5.2f}x {seq['tokens_per_s'] or 0:>9,.0f} "
        f"{level.get('vs_sequential', 0):>5.2f}x {level['ttft_median_ms'] or 0:>8.1f} {level['ttft_p95_ms'] or 0:>8.1f} "
        f"{level['join_ttft_median_ms'] or 0:>6.1f} {level['itl_median_ms'] or 0:>7.2f} {level['itl_p95_ms'] or 0:>7.2f} {level['gap_median_ms'] or 0:>7.2f} "
        f"{level['complete']:>4}/{level['requests']:<4} {level['same_text_as_sequential']:>5} "
        f"{level['server_cpu_s']:>7.1f} {level['client_cpu_s']:>7.1f} {level['other_cores'] or 0:>5.2f}",
        flush=True,
    )  # fmt: skip


def judge(levels: list[dict]) -> list[dict]:
    targets = []
    by_clients = {level["clients"]: level for level in levels}
    if 1 in by_clients and TARGET_SPEEDUP_AT in by_clients:
        ratio = by_clients[TARGET_SPEEDUP_AT].get("vs_one_client")
        targets.append({"target": f"{TARGET_SPEEDUP_AT} clients >= {TARGET_SPEEDUP:g}x the aggregate rate of 1",
                        "value": ratio, "met": ratio is not None and ratio >= TARGET_SPEEDUP})  # fmt: skip
    for level in levels:
        ttft, itl = level["ttft_median_ms"], level["itl_median_ms"]
        ratio = round(ttft / itl, 2) if ttft is not None and itl else None
        targets.append({"target": f"{level['clients']} clients: TTFT median <= {TARGET_TTFT_STEPS:g} x ITL median",
                        "value": ratio, "met": ratio is not None and ratio <= TARGET_TTFT_STEPS})  # fmt: skip
    lost = sum(level["requests"] - level["complete"] + level["sequential"]["requests"]
               - level["sequential"]["complete"] + len(level["join_problems"]) for level in levels)  # fmt: skip
    targets.append({"target": "nothing lost: every request complete", "value": lost, "met": lost == 0})
    return targets


def checkout() -> dict:
    """The commit measured, and the files that differ from it (the server's code may be among them)."""

    def git(*command: str) -> str:
        done = subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "changed": changed}


def train_run(folder: Path, args, env: dict) -> tuple[Path, str]:
    """A run at charlm train's default shape, trained --train-steps steps (speed is all that counts)."""
    run = folder / "run"
    command = [sys.executable, "-m", "charlm", "train", "--data", str(common.training_text(folder)), "--out",
               str(run), "--max-steps", str(args.train_steps), "--sample-length", "0", "--no-auto-size",
               "--threads", str(args.threads), "--device", args.device]  # fmt: skip
    print(f"training: charlm {' '.join(command[3:])}", flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"charlm train failed:\n{done.stderr[-3000:]}")
    return run, "charlm " + " ".join(command[3:])


class Server:
    """`charlm serve` as a subprocess; its stderr kept, its address read from it."""

    def __init__(self, run: Path, args, env: dict):
        self.command = [sys.executable, "-m", "charlm", "serve", str(run), "--port", "0", "--threads",
                        str(args.threads), "--max-concurrent", "512", "--max-tokens", str(max(4096, args.max_tokens)),
                        "--device", args.device]  # fmt: skip
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def address(self, timeout: float = 180) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if found := URL_LINE.search(line):
                return found.group(1), int(found.group(2))
        self.stop()
        raise SystemExit("charlm serve did not say where it listens:\n" + "\n".join(self.lines[-30:]))

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def main() -> int:
    parser = common.parser(__doc__, "serve")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.set_defaults(json=REPO / "bench" / "results" / "serve" / f"{stamp}.json")
    parser.add_argument("--run", type=Path, help="serve this run instead of training one")
    parser.add_argument("--clients", default="1,8,32,128", help="comma-separated concurrency levels")
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=200, help="max_tokens of every request")
    parser.add_argument("--prompt", default="The ", help="every request's prompt")
    parser.add_argument("--probes", type=int, default=5, help="one-token requests joining each level's streams")
    parser.add_argument("--train-steps", type=int, default=20, help="steps of the run trained without --run")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="train's and serve's")
    args = parser.parse_args()
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c]
    except ValueError:
        parser.error(f"--clients takes whole numbers separated by commas (got {args.clients!r})")
    if not args.clients or min(args.clients) < 1 or max(args.clients) > 512 or args.requests < 1:
        parser.error("--clients from 1 to 512 each (the server's --max-concurrent) and --requests at least 1")
    header = budget_report.machine()
    tree = checkout()
    print(f"CPU {header['cpu']} ({header['cores']} cores; {' '.join(header['cpu_flags']) or 'none'} of "
          f"{', '.join(budget_report.FLAGS)}); torch {header['torch']}; {header['date']}")  # fmt: skip
    changed = f"; changed: {', '.join(tree['changed'])}" if tree["changed"] else ""
    print(f"commit {(tree['commit'] or 'unknown')[:12]}{changed}")
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"warning: load average {load:.2f} before the start: other work shares the cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    env = {**os.environ, "CHARLM_CACHE_DIR": str(work / "cache")}
    train_command = None
    try:
        if args.run:
            run = args.run
        else:
            run, train_command = train_run(work, args, env)
        server = Server(run, args, env)
        try:
            host, port = server.address()
            clock = CpuClock(server.proc.pid)
            status, body = asyncio.run(http(host, port, "GET", "/v1/models"))
            described = json.loads(body)["data"][0]
            model, shape = described["id"], described["charlm"]
            global CHAR_TOKENS
            CHAR_TOKENS = shape["tokenizer"]["kind"] == "char"
            print(f"model {model}: {shape['layers']}x{shape['hidden']} {shape['cell']}, embed {shape['embed']}, "
                  f"{shape['parameters']:,} parameters, {shape['tokenizer']['kind']} tokenizer "
                  f"({shape['tokenizer']['vocab_size']}); server {args.threads} threads; {args.requests} requests "
                  f"per client, max_tokens {args.max_tokens}, prompt {args.prompt!r}, temperature 1")  # fmt: skip
            print("times in ms; TTFT from connecting to the first text chunk; ITL a request's time per token "
                  "after its first (median, p95 over requests); gap med the raw gaps between chunks; same: texts "
                  "identical to the one-at-a-time run; cpu in s; other: cores busy with other processes")  # fmt: skip
            print(HEADER, flush=True)
            levels = asyncio.run(measure(host, port, model, args, clock))
        finally:
            exit_code = server.stop()
        targets = judge(levels)
        for t in targets:
            value = "-" if t["value"] is None else t["value"]
            print(f"  target {t['target']}: {value} -> {'met' if t['met'] else 'NOT met'}")
        for level in levels:  # not a target: the figure behind "a new request joins at the next step"
            join, itl = level["join_ttft_median_ms"], level["itl_median_ms"]
            if join is not None and itl:
                print(f"  {level['clients']} clients: a request joining the running streams (median of "
                      f"{level['join_probes']}): first token after {join:.1f} ms = {join / itl:.1f} steps")  # fmt: skip
        lost = [
            level for level in levels if level["problems"] or level["sequential"]["problems"] or level["join_problems"]
        ]
        total = sum(level["requests"] + level["sequential"]["requests"] for level in levels)
        complete = sum(level["complete"] + level["sequential"]["complete"] for level in levels)
        print(f"complete: {complete}/{total} requests ({args.max_tokens} tokens or a stop, and [DONE]); "
              f"server exit code {exit_code} after SIGTERM")  # fmt: skip
        for level in lost:
            for p in level["problems"] + level["sequential"]["problems"] + level["join_problems"]:
                print(f"  {level['clients']} clients: seed {p['seed']}: {p['problem']}")
        result = {
            "machine": header, "checkout": tree, "threads": args.threads, "device": args.device, "clients": args.clients,
            "requests_per_client": args.requests, "max_tokens": args.max_tokens, "prompt": args.prompt,
            "run": str(args.run) if args.run else None, "train_command": train_command,
            "serve_command": "charlm " + " ".join(server.command[3:]), "model": described, "levels": levels, "targets": targets,
            "server_exit_code": exit_code, "client": "asyncio raw streams, one connection per request",
        }  # fmt: skip
        common.write_result(args.json, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
