"""The batching worker on its own, with a real event loop in a thread and no HTTP: a stream
whose events nobody reads is parked (out of the batch, state kept) and, once read, resumes
and ends with the text it makes alone; the other streams go on meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from helpers import train_tiny_run, word_text

from charlm.inference.batch_sampling import RowSettings
from charlm.inference.generate import Generator
from charlm.serve import worker as worker_module
from charlm.serve.streams import Chunk, End, Stream, StreamSpec
from charlm.serve.worker import ModelWorker


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("worker"), word_text(3000), max_steps=10, batch_size=4,
                         seq_len=16, eval_every=1000, checkpoint_every=1000, log_every=5)  # fmt: skip
    return Generator(run)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def spec(tokens: int, seed: int) -> StreamSpec:
    return StreamSpec("the ", tokens, RowSettings(temperature=1.0), seed=seed)


def read_to_end(loop, sink: asyncio.Queue) -> list:
    """Read the stream as a client that keeps up would, until its End."""

    async def read():
        items = []
        while not items or not isinstance(items[-1][1], End):
            items.append(await sink.get())
        return items

    return asyncio.run_coroutine_threadsafe(read(), loop).result(30)


def text_of(events) -> str:
    return "".join(event.text for _, event in events if isinstance(event, Chunk))


def until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_unread_stream_is_parked_and_resumes_with_its_own_text(generator, loop, monkeypatch):
    monkeypatch.setattr(worker_module, "PARK_BACKLOG", 100)
    monkeypatch.setattr(worker_module, "RESUME_BACKLOG", 10)
    worker = ModelWorker("tiny", generator)
    worker.start()
    try:
        alone_sink = asyncio.Queue()
        worker.submit(Stream(spec(400, seed=8), loop, alone_sink))
        alone = text_of(read_to_end(loop, alone_sink))

        unread, busy = asyncio.Queue(), asyncio.Queue()
        worker.submit(Stream(spec(400, seed=8), loop, unread))
        until(lambda: worker.parked == 1)
        parked_at = unread.qsize()
        assert 100 < parked_at < 400 and worker.active == 0
        worker.submit(Stream(spec(50, seed=1), loop, busy))  # others are served while it waits
        read_to_end(loop, busy)
        assert unread.qsize() == parked_at and worker.parked == 1
        events = read_to_end(loop, unread)
        assert text_of(events) == alone and isinstance(events[-1][1], End)
        assert events[-1][1].finish_reason == "length" and events[-1][1].completion_tokens == 400
        assert worker.parked == 0
    finally:
        worker.stop()


def test_a_parked_stream_whose_client_left_is_forgotten_and_stop_ends_the_rest(generator, loop, monkeypatch):
    monkeypatch.setattr(worker_module, "PARK_BACKLOG", 50)
    worker = ModelWorker("tiny", generator)
    worker.start()
    try:
        gone_sink, kept_sink = asyncio.Queue(), asyncio.Queue()
        gone = Stream(spec(10_000, seed=2), loop, gone_sink)
        worker.submit(gone)
        worker.submit(Stream(spec(10_000, seed=3), loop, kept_sink))
        until(lambda: worker.parked == 2)
        gone.cancel()
        until(lambda: worker.parked == 1)
    finally:
        worker.stop()
    until(lambda: any(isinstance(e, End) for _, e in list(kept_sink._queue)))
    last = [e for _, e in list(kept_sink._queue) if isinstance(e, End)]
    assert last[0].finish_reason == "abort"
    assert not any(isinstance(e, End) for _, e in list(gone_sink._queue))
