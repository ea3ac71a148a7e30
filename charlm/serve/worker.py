"""The batching worker: one thread owns one model and advances every stream in one step.

A recurrent model carries a fixed-size state per stream, so a stream can join or leave the
batch between any two steps (continuous batching). Each loop of the worker:

  1. takes what arrived: a new stream is primed (its prompt read by the fused kernel in
     one call) and its row appended to the batch;
  2. drops the streams whose client went away (they cost nothing from here on);
  3. samples the next token of every row (batch_sampling.py: each row by its own settings
     and seed, so a stream's text does not depend on its neighbours), and hands each stream
     its new text, holding back what may begin a stop string;
  4. drops the finished rows and advances the rest one step (stepper.py).

The async side talks to it only through Stream objects (streams.py): the worker hands each
loop's events to the event loop at once, and a stream's `cancel()` is read by the worker at
its next loop. Nothing else is shared.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Optional

import numpy as np
import torch

from charlm.inference.batch_sampling import BatchSettings, sample_rows
from charlm.inference.generate import Generator, StopScanner
from charlm.serve.streams import Chunk, End, Event, Failed, Stream, TokenInfo, deliver, token_text
from charlm.text.tokenizer import StreamDecoder

PRIME_WINDOW = 4096  # prompt tokens per forward pass while priming


def alternatives(logp: torch.Tensor, k: int, token_bytes: list[bytes]) -> Optional[dict[str, float]]:
    """The k most likely tokens of logp (V,) by their text, for top_logprobs (None for k 0)."""
    if k <= 0:
        return None
    values, ids = torch.topk(logp, min(k, logp.shape[-1]))
    top: dict[str, float] = {}
    for value, token in zip(values.tolist(), ids.tolist()):
        top.setdefault(token_text(token_bytes[token]), value)
    return top


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
        self._thread = threading.Thread(target=self._loop, name=f"charlm-worker-{name}", daemon=True)
        self.steps = 0  # batched steps taken, for tests and the benchmark
        self.error: Optional[BaseException] = None

    # ----- the async side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, stream: Stream) -> None:
        self._inbox.put(("stream", stream))

    def stop(self, timeout: float = 10.0) -> None:
        """End every stream (finish reason "abort") and the thread; wait up to timeout for it."""
        self._inbox.put(("stop",))
        self.join(timeout)

    def join(self, timeout: float) -> None:
        if timeout > 0 and self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def active(self) -> int:
        return len(self._rows)

    # ----- the worker thread ----------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                if not self._take_inbox(block=not self._rows):
                    break
                self._drop([row for row in self._rows if row.stream.cancelled])
                if self._rows:
                    self._step()
                self._flush()
        except BaseException as exc:  # a bug or a device failure: every stream is told, none hangs
            self.error = exc
            self._outbox = []
            message = f"the model worker failed ({type(exc).__name__}: {exc})"
            for row in self._rows:
                row.stream.put(Failed(message))
            self._rows = []
            self._fail_inbox(message)
            raise
        for row in self._rows:
            self._post(row.stream, End("abort", row.prompt_tokens, row.count))
        self._flush()
        self._rows = []
        self._fail_inbox(None)

    def _post(self, stream: Stream, event: Event) -> None:
        self._outbox.append((stream, event))

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

    def _take_inbox(self, block: bool) -> bool:
        """Admit the new streams; False once told to stop."""
        joined = []
        while True:
            try:
                item = self._inbox.get(block=block and not joined)
            except queue.Empty:
                break
            block = False
            if item[0] == "stop":
                self._admit(joined)
                return False
            if not item[1].cancelled:
                joined.append(item[1])
        self._admit(joined)
        return True

    @torch.inference_mode()
    def _admit(self, streams: list[Stream]) -> None:
        """Prime each new stream on its prompt and append its row to the batch."""
        if not streams:
            return
        generator = self.generator
        lasts, states = [], []
        for stream in streams:
            spec = stream.spec
            ids = generator.prompt_ids(spec.prompt)
            prompt = torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, P)
            model_state = None
            echo_tokens: list[TokenInfo] = []
            for begin in range(0, prompt.shape[1], PRIME_WINDOW):
                logits, model_state = generator.model(prompt[:, begin : begin + PRIME_WINDOW], model_state)
                if spec.echo and spec.logprobs is not None and spec.prompt:
                    echo_tokens += self._prompt_logprobs(ids, begin, logits[0].float(), spec.logprobs, echo_tokens)
                last = logits[:, -1, :].float()
                del logits
            lasts.append(last)
            states.append(generator.stepper.from_model_state(model_state))
            prompt_tokens = len(generator.tokenizer.encode(spec.prompt)) if spec.prompt else 0
            offset = len(spec.prompt) if spec.echo else 0
            row = _Row(stream, generator, prompt_tokens, offset)
            self._rows.append(row)
            if spec.echo and spec.prompt:
                self._post(stream, Chunk(spec.prompt, echo_tokens))
        fresh = torch.cat(lasts)  # (N, V)
        self._last = fresh if self._last is None else torch.cat([self._last, fresh])
        joined_state = [torch.cat(parts) for parts in zip(*states)]
        self._state = joined_state if not self._state else [torch.cat(p) for p in zip(self._state, joined_state)]
        if generator.guard is not None:
            fresh_utf8 = generator.guard.initial(len(streams))
            self._utf8 = fresh_utf8 if self._utf8 is None else torch.cat([self._utf8, fresh_utf8])
        self._settings = None
        self._drop([row for row in self._rows if row.spec.max_tokens == 0], "length")

    def _prompt_logprobs(
        self, ids: list[int], begin: int, logits: torch.Tensor, top: int, so_far: list[TokenInfo]
    ) -> list[TokenInfo]:
        """Entries for the prompt tokens a window of priming logits (T, V) predicts (echo)."""
        tokens = self.generator.token_bytes
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        offset = (so_far[-1].offset + len(so_far[-1].text)) if so_far else 0
        if begin == 0:
            first = token_text(tokens[ids[0]])
            out.append(TokenInfo(first, None, None, 0))
            offset = len(first)
        for t in range(logp.shape[0]):
            position = begin + t + 1  # the prompt token this row of logits predicts
            if position >= len(ids):
                break
            text = token_text(tokens[ids[position]])
            out.append(TokenInfo(text, float(logp[t, ids[position]]), alternatives(logp[t], top, tokens), offset))
            offset += len(text)
        return out

    def _drop(self, rows: list[_Row], reason: Optional[str] = None) -> None:
        """Take rows out of the batch; with a reason, tell their streams they ended."""
        if not rows:
            return
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self._rows) if id(row) not in gone]
        if reason is not None:
            for row in rows:
                self._finish(row, reason)
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

    def _finish(self, row: _Row, reason: str) -> None:
        if reason == "length":  # what the stop scanner held back is text after all
            tail = row.scanner.flush()
            if tail:
                self._send(row, tail, final=True)
        row.pending = []
        self._post(row.stream, End(reason, row.prompt_tokens, row.count))

    def _send(self, row: _Row, text: str, final: bool = False) -> None:
        """Hand text to the client with the logprob entries of the tokens it covers."""
        row.emitted += len(text)
        covered = [t for t in row.pending if t.offset < row.emitted]
        row.pending = [t for t in row.pending if t.offset >= row.emitted]
        self._post(row.stream, Chunk(text, covered))

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
            row.count += 1
            text = row.decoder.push(token)
            if row.spec.logprobs is not None:
                top = alternatives(logp[b], row.spec.logprobs, token_bytes)
                row.pending.append(TokenInfo(token_text(token_bytes[token]), chosen[b], top, row.decoded))
            row.decoded += len(text)
            safe, stopped = row.scanner.push(text)
            if safe:
                self._send(row, safe)
            if stopped:
                done.append((row, "stop"))
            elif row.count >= row.spec.max_tokens:
                done.append((row, "length"))
        if done:
            gone = {id(row) for row, _ in done}
            keep = [b for b, row in enumerate(self._rows) if id(row) not in gone]
            tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
            for reason in ("stop", "length"):
                self._drop([row for row, why in done if why == reason], reason)
        if not self._rows:
            return
        self._last, self._state = generator.stepper.step(tokens, self._state)
        self._last = self._last.float()
        self.steps += 1
