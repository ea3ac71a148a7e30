"""The server's settings and limits, each with a documented default.

Every limit is checked when a request arrives, before any work starts: a request past one
gets a 400 (a field), 413 (the body) or 429 (the concurrent streams), never a slow death of
the process. `charlm serve --help` lists them as options; the README's "Serving" section
gives the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from charlm.errors import check


@dataclass(frozen=True)
class ServeSettings:
    """What a server allows and how it runs."""

    api_key: Optional[str] = None  # when set, every /v1 request needs "Authorization: Bearer <key>"
    max_concurrent: int = 64  # streams being generated at once, over all models (n counts each)
    max_tokens: int = 4096  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # max_tokens when a request gives none, as OpenAI's API
    max_n: int = 16  # completions per prompt
    max_prompts: int = 64  # prompts in one request (a list prompt)
    max_prompt_chars: int = 32_768  # per prompt; the prompt is read at once when a stream joins
    max_stop: int = 8  # stop strings per request, each at most max_stop_chars
    max_stop_chars: int = 256
    max_logprobs: int = 20  # alternatives per token with logprobs
    max_score_chars: int = 1_000_000  # text for /v1/score
    max_inspect_chars: int = 20_000  # text for /v1/inspect (the playground's views)
    max_body_bytes: int = 2 << 20  # a request body; past it, 413

    def validate(self) -> None:
        for name in (
            "max_concurrent", "max_tokens", "default_max_tokens", "max_n", "max_prompts", "max_prompt_chars",
            "max_stop", "max_stop_chars", "max_logprobs", "max_score_chars", "max_inspect_chars", "max_body_bytes",
        ):  # fmt: skip
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, name, f"must be a whole number of at least 1 (got {value!r})")
        check(
            self.default_max_tokens <= self.max_tokens,
            "default_max_tokens",
            f"must be at most max_tokens ({self.max_tokens}) (got {self.default_max_tokens})",
        )
        check(self.api_key is None or self.api_key.strip() != "", "api_key", "must not be empty")
