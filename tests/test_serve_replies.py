"""The completion response: the SSE text chunk written from a template is the very chunk the
general path writes, for any text and choice index."""

from __future__ import annotations

import json

import pytest

from charlm.serve.replies import Reply
from charlm.serve.requests import read_completion
from charlm.serve.settings import ServeSettings
from charlm.serve.streams import Chunk, End


@pytest.mark.parametrize("text", ["a", 'say "hi"\n', "\\", "é🙂", "{index}", '"index": 0', ""])
def test_the_templated_text_chunk_equals_the_general_one(text):
    request = read_completion({"model": "m/x", "prompt": ["p", "q"], "n": 3, "stream": True}, ServeSettings())
    reply = Reply(request, "cmpl-1", 1700000000)
    for index in (0, 4):
        line = reply.sse(index, Chunk(text))
        assert line.startswith("data: ") and line.endswith("\n\n")
        assert json.loads(line[6:]) == reply.chunk(index, Chunk(text))
    end = reply.sse(5, End("length", 1, 2))
    assert json.loads(end[6:])["choices"] == [{"text": "", "index": 5, "logprobs": None, "finish_reason": "length"}]
