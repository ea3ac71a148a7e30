"""What passes between the worker thread and the coroutines answering clients.

A StreamSpec says what one choice asks for; a Stream carries its events (Chunk: new text
and its tokens' logprobs; End: the finish reason and token counts; Failed: the worker broke)
from the worker thread to the request's asyncio queue, and its cancel flag back. `deliver`
hands a whole step's events to each event loop in one call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Optional, Union

from charlm.inference.batch_sampling import RowSettings


@dataclass(frozen=True)
class StreamSpec:
    """What one choice asks for: its prompt, length, settings, seed and extras."""

    prompt: str
    max_tokens: int
    settings: RowSettings
    seed: Optional[int] = None  # None: fresh randomness
    seed_index: int = 0  # mixed into the seed: a request's choices differ, each repeatable
    stop: tuple[str, ...] = ()
    logprobs: Optional[int] = None  # alternatives per token, 0 for the chosen token's only
    echo: bool = False


@dataclass
class TokenInfo:
    """One token of a choice's text, for the logprobs field."""

    text: str
    logprob: Optional[float]  # None for the first prompt token (nothing predicts it)
    top: Optional[dict[str, float]]
    offset: int


@dataclass
class Chunk:
    """New text of a stream, with the tokens that made it when logprobs were asked for."""

    text: str
    tokens: list[TokenInfo] = field(default_factory=list)


@dataclass
class End:
    """A stream is over: why ("stop", "length", or "abort" when the server is stopping)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    """The worker could not make this stream (a bug or the device failed): what to say."""

    message: str


Event = Union[Chunk, End, Failed]


class Stream:
    """One choice, between the worker thread and the coroutine that answers the client.

    The streams of one request share one asyncio queue (`sink`); the worker puts
    (index, event) pairs on it, index being the choice's place in the request."""

    def __init__(self, spec: StreamSpec, loop: asyncio.AbstractEventLoop, sink: asyncio.Queue, index: int = 0):
        self.spec = spec
        self.index = index
        self._sink = sink
        self._loop = loop
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """The client is gone: the worker drops this stream at its next loop."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def backlog(self) -> int:
        """Events waiting on this stream's request queue, unread by the client (from any thread:
        a deque's length is read atomically)."""
        return self._sink.qsize()

    def put(self, event: Event) -> None:
        """Hand one event over now (from the worker thread, when it has nothing else to send)."""
        deliver([(self, event)])

    def _receive(self, event: Event) -> None:
        self._sink.put_nowait((self.index, event))


def deliver(events: list[tuple[Stream, Event]]) -> None:
    """Hand events to their streams' event loops: one wake-up per loop, not one per event
    (a step of a hundred streams would otherwise write to the loop's pipe a hundred times)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Event]]] = {}
    for stream, event in events:
        by_loop.setdefault(stream._loop, []).append((stream, event))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_receive_all, batch)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            for stream, _ in batch:
                stream.cancel()


def _receive_all(batch: list[tuple[Stream, Event]]) -> None:
    for stream, event in batch:
        stream._receive(event)


def token_text(data: bytes) -> str:
    """A token's text for logprobs: its characters, or its bytes when they are not whole ones."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)
