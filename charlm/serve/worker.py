"""The batching worker: one thread owns one model and advances every stream in one step.

A recurrent model carries a fixed-size state per stream, so a stream can join or leave the
batch between any two steps (continuous batching). Each loop of the worker:

  1. takes what arrived: the new streams are primed (priming.py: short prompts stepped
     together, long ones through the fused kernel) and their rows appended to the batch;
  2. drops the streams whose client went away (they cost nothing from here on);
  3. samples the next token of every row (batch_sampling.py: each row by its own settings
     and seed, so a stream's text does not depend on its neighbours), and hands each stream
     its new text, holding back what may begin a stop string;
  4. drops the finished rows and advances the rest one step (stepper.py).

A stream whose client reads slower than the model writes is parked: its row leaves the batch
with its state, logits and random generator kept, and comes back where it was once its
queue has drained, so a stalled client costs neither compute nor unbounded memory.

The async side talks to it only through Stream objects (streams.py): the worker hands each
loop's events to the event loop at once, and a stream's `cancel()` is read by the worker at
its next loop. Nothing else is shared.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Optional

import numpy as np
import torch

from charlm.inference.batch_sampling import BatchSettings, sample_rows
from charlm.inference.generate import Generator, StopScanner
from charlm.inference.priming import SHORT_PROMPT, prime_fused, prime_stepped
from charlm.serve.streams import Chunk, End, Event, Failed, Stream, TokenInfo, deliver, token_text
from charlm.text.tokenizer import StreamDecoder


def alternatives(logp: torch.Tensor, k: int, token_bytes: list[bytes]) -> Optional[dict[str, float]]:
    """The k most likely tokens of logp (V,) by their text, for top_logprobs (None for k 0)."""
    if k <= 0:
        return None
    values, ids = torch.topk(logp, min(k, logp.shape[-1]))
    top: dict[str, float] = {}
    for value, token in zip(values.tolist(), ids.tolist()):
        top.setdefault(token_text(token_bytes[token]), value)
    return top


def echo_collector(ids: list[int], top: int, entries: list[TokenInfo], token_bytes: list[bytes]):
    """prime_fused's on_window for an echo with logprobs: gathers the prompt tokens' entries."""

    def collect(begin: int, logits: torch.Tensor) -> None:
        entries.extend(prompt_entries(ids, begin, logits, top, entries, token_bytes))

    return collect


def prompt_entries(
    ids: list[int], begin: int, logits: torch.Tensor, top: int, so_far: list[TokenInfo], token_bytes: list[bytes]
) -> list[TokenInfo]:
    """Entries for the prompt tokens a window of priming logits (T, V) predicts."""
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    offset = (so_far[-1].offset + len(so_far[-1].text)) if so_far else 0
    if begin == 0:
        first = token_text(token_bytes[ids[0]])
        out.append(TokenInfo(first, None, None, 0))
        offset = len(first)
    for t in range(logp.shape[0]):
        position = begin + t + 1  # the prompt token this row of logits predicts
        if position >= len(ids):
            break
        text = token_text(token_bytes[ids[position]])
        out.append(TokenInfo(text, float(logp[t, ids[position]]), alternatives(logp[t], top, token_bytes), offset))
        offset += len(text)
    return out


class _Row:
    """The worker's own record of an active stream (touched by the worker thread only)."""

    def __init__(self, stream: Stream, generator: Generator, prompt_tokens: int, offset: int):
        spec = stream.spec
        self.stream = stream
        self.spec = spec
        self.decoder = StreamDecoder(generator.tokenizer)
        self.scanner = StopScanner(list(spec.stop))
        self.count = 0
        self.prompt_tokens = prompt_tokens
        self.decoded = offset  # characters of the choice's text decoded so far (the echo included)
        self.emitted = offset  # characters of it handed to the client
        self.pending: list[TokenInfo] = []  # logprob entries whose text is held back
        if spec.seed is None:
            self.rng = np.random.default_rng()
        else:
            self.rng = np.random.default_rng(np.random.SeedSequence([spec.seed % (1 << 64), spec.seed_index]))
        self.parked: Optional[tuple] = None  # (last, state, utf8) while out of the batch for a slow reader

    def push(self, token: int, logprob: Optional[tuple]) -> tuple[Optional[Chunk], Optional[str]]:
        """Take one sampled token (with its (text, logprob, top) when logprobs are asked for):
        the chunk to send now, if any, and the finish reason, if it ends the stream."""
        self.count += 1
        text = self.decoder.push(token)
        if logprob is not None:
            self.pending.append(TokenInfo(*logprob, self.decoded))
        self.decoded += len(text)
        safe, stopped = self.scanner.push(text)
        chunk = self.release(safe) if safe else None
        return chunk, "stop" if stopped else ("length" if self.count >= self.spec.max_tokens else None)

    def release(self, text: str) -> Chunk:
        """Text for the client, with the logprob entries of the tokens it covers."""
        self.emitted += len(text)
        covered = [t for t in self.pending if t.offset < self.emitted]
        self.pending = [t for t in self.pending if t.offset >= self.emitted]
        return Chunk(text, covered)

    def finish(self, reason: str) -> list[Event]:
        """The last events of the stream; at "length" what the stop scanner held back is text."""
        tail = self.scanner.flush() if reason == "length" else ""
        events: list[Event] = [self.release(tail)] if tail else []
        self.pending = []
        return events + [End(reason, self.prompt_tokens, self.count)]


log = logging.getLogger("charlm.serve")
# A client that reads slower than the model writes (or not at all) would have its text pile up
# in memory: past PARK_BACKLOG events waiting on its queue its rows leave the batch, state kept,
# and come back once the queue is down to RESUME_BACKLOG.
PARK_BACKLOG = 512
RESUME_BACKLOG = 64
PARKED_POLL_S = 0.01  # how often a worker with only parked rows looks at their queues


class ModelWorker:
    """Owns one model's generation on one device; streams reach it through `submit`."""

    def __init__(self, name: str, generator: Generator):
        self.name = name
        self.generator = generator
        self.device = generator.device
        self.vocab = generator.tokenizer.vocab_size
        self.forbidden = generator.forbidden_base()  # (V,) or None
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._rows: list[_Row] = []
        self._last: Optional[torch.Tensor] = None  # (B, V) logits each row samples from next
        self._state: list[torch.Tensor] = []  # the stepper's per-layer state, (B, H) each
        self._utf8: Optional[torch.Tensor] = None  # (B,) UTF-8 automaton states, byte vocabularies
        self._settings: Optional[BatchSettings] = None
        self._outbox: list[tuple[Stream, Event]] = []  # events of this loop, delivered at its end
        self._arriving: list[Stream] = []  # taken from the inbox, not yet rows
        self._parked: list[_Row] = []  # out of the batch until their client reads
        self._thread = threading.Thread(target=self._loop, name=f"charlm-worker-{name}", daemon=True)
        self.steps = 0  # batched steps taken, for tests and the benchmark
        self.error: Optional[BaseException] = None

    # ----- the async side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, stream: Stream) -> None:
        self._inbox.put(("stream", stream))
        if self.error is not None:  # the thread is gone: nobody would read the inbox
            self._fail_inbox(f"the model worker failed earlier ({type(self.error).__name__}: {self.error})")

    def stop(self, timeout: float = 10.0) -> None:
        """End every stream (finish reason "abort") and the thread; wait up to timeout for it."""
        self._inbox.put(("stop",))
        self.join(timeout)

    def join(self, timeout: float) -> None:
        if timeout > 0 and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def active(self) -> int:
        """Streams in the batch (being generated)."""
        return len(self._rows)

    @property
    def parked(self) -> int:
        """Streams set aside until their client reads what is waiting for it."""
        return len(self._parked)

    # ----- the worker thread ----------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                wait = 0 if self._rows else (PARKED_POLL_S if self._parked else None)
                if not self._take_inbox(wait):
                    break
                self._drop([row for row in self._rows if row.stream.cancelled])
                self._balance()
                if self._rows:
                    self._step()
                self._flush()
                # let the event loop's thread take the GIL now, to send what was just handed
                # over and read new requests; otherwise it may wait a whole switch interval (5 ms)
                time.sleep(0)
        except BaseException as exc:  # a bug or a device failure: every stream is told, none hangs
            self.error = exc
            self._outbox = []
            message = f"the model worker failed ({type(exc).__name__}: {exc})"
            rows = self._rows + self._parked
            told = {id(row.stream) for row in rows}
            for stream in [row.stream for row in rows] + [s for s in self._arriving if id(s) not in told]:
                stream.put(Failed(message))
            self._rows, self._parked, self._arriving = [], [], []
            self._fail_inbox(message)
            log.error("the worker of %s failed; its requests are answered with a 500", self.name, exc_info=exc)
            return
        for row in self._rows + self._parked:
            self._outbox.append((row.stream, End("abort", row.prompt_tokens, row.count)))
        self._flush()
        self._rows, self._parked = [], []
        self._fail_inbox(None)

    def _flush(self) -> None:
        if self._outbox:
            events, self._outbox = self._outbox, []
            deliver(events)

    def _fail_inbox(self, message: Optional[str]) -> None:
        """After the loop ends: whatever still waits is told, so no client hangs."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item[0] == "stream":
                item[1].put(Failed(message) if message else End("abort", 0, 0))

    def _take_inbox(self, wait: Optional[float]) -> bool:
        """Admit the new streams, waiting up to `wait` seconds for one (None: until one comes);
        False once told to stop."""
        joined = []
        while True:
            try:
                item = self._inbox.get(block=wait != 0, timeout=wait)
            except queue.Empty:
                break
            wait = 0
            if item[0] == "stop":
                self._admit(joined)
                return False
            if not item[1].cancelled:
                joined.append(item[1])
                self._arriving = joined  # told too if the worker fails
        self._admit(joined)
        self._arriving = []
        return True

    @torch.inference_mode()
    def _admit(self, streams: list[Stream]) -> None:
        """Prime the new streams on their prompts and append their rows to the batch: the
        short prompts all together (stepped), each long one, or one whose echo needs the
        prompt's logprobs, through the fused kernel."""
        if not streams:
            return
        generator = self.generator
        prompts = [generator.prompt_ids(stream.spec.prompt) for stream in streams]
        echo_logprobs = [s.spec.echo and s.spec.logprobs is not None and bool(s.spec.prompt) for s in streams]
        short = [i for i, ids in enumerate(prompts) if len(ids) <= SHORT_PROMPT and not echo_logprobs[i]]
        order, lasts, states = list(short), [], []
        if short:
            last, state = prime_stepped(generator.stepper, [prompts[i] for i in short])
            lasts.append(last)
            states.append(state)
        echoes: dict[int, list[TokenInfo]] = {}
        for i in [i for i in range(len(streams)) if i not in set(short)]:
            echoes[i] = []
            top = streams[i].spec.logprobs
            collect = echo_collector(prompts[i], top, echoes[i], generator.token_bytes) if echo_logprobs[i] else None
            last, state = prime_fused(generator.stepper, prompts[i], collect)
            order.append(i)
            lasts.append(last)
            states.append(state)
        for i in order:
            stream, spec = streams[i], streams[i].spec
            prompt_tokens = len(generator.tokenizer.encode(spec.prompt)) if spec.prompt else 0
            self._rows.append(_Row(stream, generator, prompt_tokens, len(spec.prompt) if spec.echo else 0))
            if spec.echo and spec.prompt:
                self._outbox.append((stream, Chunk(spec.prompt, echoes.get(i, []))))
        utf8 = generator.guard.initial(len(streams)) if generator.guard is not None else None
        self._append(torch.cat(lasts), [torch.cat(parts) for parts in zip(*states)], utf8)
        self._drop([row for row in self._rows if row.spec.max_tokens == 0], "length")

    def _append(self, last: torch.Tensor, state: list[torch.Tensor], utf8: Optional[torch.Tensor]) -> None:
        """The tensors of the rows just appended to self._rows: logits (N, V), state, UTF-8 (N,)."""
        self._last = last if self._last is None else torch.cat([self._last, last])
        self._state = state if not self._state else [torch.cat(p) for p in zip(self._state, state)]
        if utf8 is not None:
            self._utf8 = utf8 if self._utf8 is None else torch.cat([self._utf8, utf8])
        self._settings = None

    def _balance(self) -> None:
        """Park the rows whose client is not reading; bring back those it has caught up with."""
        self._parked = [row for row in self._parked if not row.stream.cancelled]
        back = [row for row in self._parked if row.stream.backlog() <= RESUME_BACKLOG]
        if back:
            self._parked = [row for row in self._parked if row not in back]
            self._rows += back
            lasts, states, utf8s = zip(*(row.parked for row in back))
            utf8 = torch.cat(utf8s) if utf8s[0] is not None else None
            self._append(torch.cat(lasts), [torch.cat(parts) for parts in zip(*states)], utf8)
            for row in back:
                row.parked = None
        slow = [i for i, row in enumerate(self._rows) if row.stream.backlog() > PARK_BACKLOG]
        for i in slow:
            utf8 = self._utf8[i : i + 1] if self._utf8 is not None else None
            self._rows[i].parked = (self._last[i : i + 1], [t[i : i + 1] for t in self._state], utf8)
        self._parked += [self._rows[i] for i in slow]
        self._drop([self._rows[i] for i in slow])

    def _drop(self, rows: list[_Row], reason: Optional[str] = None) -> None:
        """Take rows out of the batch; with a reason, tell their streams they ended."""
        if not rows:
            return
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self._rows) if id(row) not in gone]
        if reason is not None:
            for row in rows:
                for event in row.finish(reason):
                    self._outbox.append((row.stream, event))
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._last, self._state, self._utf8 = None, [], None
        else:
            index = torch.tensor(keep, device=self.device)
            self._last = self._last.index_select(0, index)
            self._state = [t.index_select(0, index) for t in self._state]
            if self._utf8 is not None:
                self._utf8 = self._utf8.index_select(0, index)
        self._settings = None

    @torch.inference_mode()
    def _step(self) -> None:
        """Sample one token for every row, hand out the text, advance the model."""
        generator = self.generator
        if self._settings is None:
            self._settings = BatchSettings([row.spec.settings for row in self._rows], self.vocab, self.device)
        last = self._last
        raw = last
        forbidden = self.forbidden.expand(len(self._rows), -1) if self.forbidden is not None else None
        if self._utf8 is not None:
            mask = generator.guard.mask(self._utf8)
            forbidden = mask if forbidden is None else (mask | forbidden)
        if forbidden is not None:
            last = last.masked_fill(forbidden, float("-inf"))
        uniforms = np.array([row.rng.random() for row in self._rows], dtype=np.float64)
        tokens = sample_rows(last, self._settings, uniforms)  # (B,)
        if self._utf8 is not None:
            self._utf8 = generator.guard.advance(self._utf8, tokens)
        wants = [row.spec.logprobs for row in self._rows if row.spec.logprobs is not None]
        logp = torch.log_softmax(raw.float(), dim=-1) if wants else None
        chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist() if logp is not None else None
        token_bytes = generator.token_bytes
        done: list[tuple[_Row, str]] = []
        for b, (row, token) in enumerate(zip(self._rows, tokens.tolist())):
            logprob = None
            if row.spec.logprobs is not None:
                logprob = (
                    token_text(token_bytes[token]),
                    chosen[b],
                    alternatives(logp[b], row.spec.logprobs, token_bytes),
                )
            chunk, reason = row.push(token, logprob)
            if chunk is not None:
                self._outbox.append((row.stream, chunk))
            if reason is not None:
                done.append((row, reason))
        if done:
            gone = {id(row) for row, _ in done}
            keep = [b for b, row in enumerate(self._rows) if id(row) not in gone]
            tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
            for row, why in done:
                self._outbox.extend((row.stream, event) for event in row.finish(why))
            self._drop([row for row, _ in done])  # one pass over the batch's tensors, whatever the reasons
        if not self._rows:
            return
        self._last, self._state = generator.stepper.step(tokens, self._state)
        self._last = self._last.float()
        self.steps += 1
