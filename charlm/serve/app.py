"""The HTTP application: OpenAI-compatible completions, charlm's score and inspect, the playground.

    app = create_app(load_models({"mine": "runs/mine"}, device), ServeSettings())
    uvicorn.run(app)                                    # charlm serve does this (cli/serve.py)

Routes: GET /v1/models, GET /v1/models/{id}, GET /v1/models/{id}/metrics, POST /v1/completions,
POST /v1/score, POST /v1/inspect, GET / (the playground) and /static/*. Every /v1 route
checks the API key when one is set. A refused request gets OpenAI's error object with its
status (400 a field, 401 the key, 404 a model or path, 405 a method, 413 the body, 429 the
concurrent streams); anything unexpected a 500 with a one-line message, the traceback going
to the server's log only. Generation is handed to each model's worker (worker.py); this
module only reads requests, counts streams against the limit and writes responses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from charlm.errors import CharlmError
from charlm.serve.models import ServedModel, find_model
from charlm.serve.replies import Reply, server_error
from charlm.serve.requests import (
    RequestError,
    parse_json,
    read_completion,
    read_inspect,
    read_score,
)
from charlm.serve.settings import ServeSettings
from charlm.serve.streams import End, Failed, Stream, StreamSpec

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("charlm.serve")


class StreamSlots:
    """Counts the streams being generated against --max-concurrent (on the event loop only)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, count: int) -> None:
        if self.used + count > self.limit:
            raise RequestError(
                429,
                f"the server is generating {self.used} of its {self.limit} concurrent streams and this request "
                f"needs {count}; retry shortly",
                None,
                "rate_limit_exceeded",
            )
        self.used += count

    def give_back(self, count: int) -> None:
        self.used -= count


class Service:
    """The state behind the routes: the models, the settings, the stream slots."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings):
        settings.validate()
        self.models = models
        self.settings = settings
        self.slots = StreamSlots(settings.max_concurrent)
        self.stopping = False

    def start(self) -> None:
        for model in self.models.values():
            model.worker.start()

    def stop(self, wait: bool = True) -> None:
        """End every stream (finish reason "abort") and stop the workers; safe to call again.
        wait: also wait for the worker threads to end (not from a signal handler)."""
        if not self.stopping:
            self.stopping = True
            for model in self.models.values():
                model.worker.stop(timeout=0)
                model.analysis.shutdown(wait=False, cancel_futures=True)
        if wait:
            for model in self.models.values():
                model.worker.join(timeout=10)

    # ----- request plumbing -----------------------------------------------------------
    def refuse_when_stopping(self) -> None:
        if self.stopping:
            raise RequestError(503, "the server is shutting down", None, "shutting_down")

    def authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise RequestError(401, "a valid API key is required: send the header Authorization: Bearer <key>",
                               None, "invalid_api_key")  # fmt: skip

    async def body(self, request: Request) -> dict[str, Any]:
        """The JSON object of a request, read up to the body limit (413 past it)."""
        limit = self.settings.max_body_bytes
        too_big = RequestError(413, f"the request body is over the server's limit of {limit:,} bytes", None,
                               "body_too_large")  # fmt: skip
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        parts, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise too_big
            parts.append(part)
        return parse_json(b"".join(parts))

    # ----- routes ---------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [m.describe() for m in self.models.values()]})

    async def get_model(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(find_model(self.models, request.path_params["model"]).describe())

    async def metrics(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(find_model(self.models, request.path_params["model"]).curve())

    async def score(self, request: Request) -> Response:
        self.authorize(request)
        wanted = read_score(await self.body(request), self.settings)
        model = find_model(self.models, wanted.model)
        return JSONResponse(await self._analysis(model, lambda: model.score(wanted)))

    async def inspect(self, request: Request) -> Response:
        self.authorize(request)
        wanted = read_inspect(await self.body(request), self.settings)
        model = find_model(self.models, wanted.model)
        return JSONResponse(await self._analysis(model, lambda: model.inspect(wanted)))

    async def _analysis(self, model: ServedModel, job) -> Any:
        self.refuse_when_stopping()
        try:
            return await asyncio.get_running_loop().run_in_executor(model.analysis, job)
        except CharlmError as exc:  # the text itself is the problem (nothing to score, ...)
            raise RequestError(400, str(exc), None, "invalid_value") from None

    async def completions(self, request: Request) -> Response:
        self.authorize(request)
        wanted = read_completion(await self.body(request), self.settings)
        model = find_model(self.models, wanted.model)
        self.refuse_when_stopping()
        self.slots.take(wanted.streams)
        try:
            loop = asyncio.get_running_loop()
            sink: asyncio.Queue = asyncio.Queue()
            streams = [
                Stream(
                    StreamSpec(
                        prompt,
                        wanted.max_tokens,
                        wanted.settings,
                        wanted.seed,
                        j,
                        wanted.stop,
                        wanted.logprobs,
                        wanted.echo,
                    ),
                    loop,
                    sink,
                    i * wanted.n + j,
                )  # fmt: skip
                for i, prompt in enumerate(wanted.prompts)
                for j in range(wanted.n)
            ]
            for stream in streams:
                model.worker.submit(stream)
        except BaseException:
            self.slots.give_back(wanted.streams)
            raise
        reply = Reply(wanted, f"cmpl-{uuid.uuid4().hex}", int(time.time()))
        if wanted.stream:
            return StreamingResponse(self._sse(request, reply, streams, sink), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        try:
            async for events in self._events(request, streams, sink):
                for index, event in events:
                    reply.take(index, event)
        finally:
            self._release(streams)
        if reply.failure:
            raise RuntimeError(reply.failure)
        return JSONResponse(reply.whole())

    def _release(self, streams: list[Stream]) -> None:
        for stream in streams:
            stream.cancel()  # a no-op for the finished ones
        self.slots.give_back(len(streams))

    async def _events(self, request: Request, streams: list[Stream], sink: asyncio.Queue) -> AsyncIterator[list]:
        """The streams' events, as many at a time as have arrived, until every stream has
        ended; it stops early when the client goes away (a watcher puts GONE on the queue)."""
        open_streams = len(streams)
        watcher = asyncio.ensure_future(_watch_disconnect(request, sink))
        try:
            while open_streams:
                events = [await sink.get()]
                while not sink.empty():
                    events.append(sink.get_nowait())
                if any(index is GONE for index, _ in events):
                    return
                open_streams -= sum(isinstance(event, (End, Failed)) for _, event in events)
                yield events
        finally:
            watcher.cancel()

    async def _sse(self, request: Request, reply: "Reply", streams: list[Stream], sink: asyncio.Queue):
        try:
            async for events in self._events(request, streams, sink):
                text = "".join(reply.sse(index, event) for index, event in events)
                if text:
                    yield text
            if reply.failure:
                yield f"data: {json.dumps(server_error(reply.failure))}\n\n"
            elif reply.request.include_usage:
                yield f"data: {json.dumps(reply.usage_chunk())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self._release(streams)


GONE = object()  # what the disconnect watcher puts on a request's queue


async def _watch_disconnect(request: Request, sink: asyncio.Queue) -> None:
    """Put GONE on the queue when the client has gone (the body was read already, so only
    that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            sink.put_nowait((GONE, None))
            return


async def request_error(request: Request, exc: RequestError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = f"no such path: {request.method} {request.url.path} (the API is under /v1)"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail
    return JSONResponse(RequestError(exc.status_code, message).body(), status_code=exc.status_code)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("while answering %s %s", request.method, request.url.path, exc_info=exc)
    message = f"the server failed to answer ({type(exc).__name__}); its log has the details"
    return JSONResponse(server_error(message), status_code=500)


async def playground(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def create_app(models: dict[str, ServedModel], settings: ServeSettings = ServeSettings()) -> Starlette:
    """The Starlette app serving `models` (see load_models); its workers start with the app
    and stop at its shutdown (or earlier, from app.state.service.stop())."""
    service = Service(models, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    routes = [
        Route("/v1/models", service.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}/metrics", service.metrics, methods=["GET"]),
        Route("/v1/models/{model:path}", service.get_model, methods=["GET"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/score", service.score, methods=["POST"]),
        Route("/v1/inspect", service.inspect, methods=["POST"]),
        Route("/", playground, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: unexpected_error},
    )
    app.state.service = service
    return app
