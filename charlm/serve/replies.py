"""OpenAI's completion response, whole or as server-sent chunks, built from a request's events.

A Reply collects the workers' Chunk/End/Failed events of one request (its choices indexed as
OpenAI does: prompt i, completion j -> i * n + j) and writes the response object: choices with
text, logprobs (tokens, token_logprobs, top_logprobs, text_offset) and finish_reason, and
usage, the prompt tokens counted once per prompt whatever n is.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from charlm.serve.requests import CompletionRequest
from charlm.serve.streams import Chunk, End, Failed


class Reply:
    """Builds a completion's response (whole, or chunk by chunk) from the workers' events."""

    def __init__(self, request: CompletionRequest, reply_id: str, created: int):
        self.request = request
        self.id = reply_id
        self.created = created
        count = request.streams
        self.texts: list[list[str]] = [[] for _ in range(count)]
        self.tokens: list[list] = [[] for _ in range(count)]
        self.finish: list[Optional[str]] = [None] * count
        self.prompt_tokens: dict[int, int] = {}  # per prompt, counted once whatever n is
        self.completion_tokens = 0
        self.failure: Optional[str] = None
        self._template: Optional[list[str]] = None  # sse()'s text chunk, cut where the text and index go

    def take(self, index: int, event) -> None:
        if isinstance(event, Chunk):
            if self.request.stream:  # each chunk went out as it came: nothing to keep
                return
            self.texts[index].append(event.text)
            self.tokens[index].extend(event.tokens)
        elif isinstance(event, End):
            self.finish[index] = event.finish_reason
            self.prompt_tokens[index // self.request.n] = event.prompt_tokens
            self.completion_tokens += event.completion_tokens
        elif isinstance(event, Failed):
            self.failure = event.message

    def _logprobs(self, tokens: list) -> Optional[dict[str, Any]]:
        if self.request.logprobs is None:
            return None
        return {
            "tokens": [t.text for t in tokens],
            "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [t.top for t in tokens] if self.request.logprobs > 0 else None,
            "text_offset": [t.offset for t in tokens],
        }

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt + self.completion_tokens}  # fmt: skip

    def _head(self) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.request.model}

    def whole(self) -> dict[str, Any]:
        choices = [
            {
                "text": "".join(self.texts[i]),
                "index": i,
                "logprobs": self._logprobs(self.tokens[i]),
                "finish_reason": self.finish[i],
            }  # fmt: skip
            for i in range(self.request.streams)
        ]
        return {**self._head(), "choices": choices, "usage": self.usage()}

    def chunk(self, index: int, event) -> Optional[dict[str, Any]]:
        """The SSE chunk of one event: new text, or a choice's end (with its finish reason)."""
        self.take(index, event)
        if isinstance(event, Chunk):
            choice = {"text": event.text, "index": index, "logprobs": self._logprobs(event.tokens),
                      "finish_reason": None}  # fmt: skip
        elif isinstance(event, End):
            choice = {"text": "", "index": index, "logprobs": None, "finish_reason": event.finish_reason}
        else:
            return None
        return {**self._head(), "choices": [choice]}

    def sse(self, index: int, event) -> str:
        """chunk() as an SSE event, "" for none. A text chunk without logprobs, the one sent
        for nearly every token, is written from a template: only its text is encoded."""
        if isinstance(event, Chunk) and self.request.logprobs is None:
            if self._template is None:
                marker = "\x00"
                whole = json.dumps({**self._head(), "choices": [{"text": marker, "index": 0, "logprobs": None,
                                                                  "finish_reason": None}]})  # fmt: skip
                before, after = whole.split(json.dumps(marker))
                self._template = [before, *after.split('"index": 0')]
            before, middle, after = self._template
            return f'data: {before}{json.dumps(event.text)}{middle}"index": {index}{after}\n\n'
        chunk = self.chunk(index, event)
        return f"data: {json.dumps(chunk)}\n\n" if chunk is not None else ""

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._head(), "choices": [], "usage": self.usage()}


def server_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
