"""Reading request bodies: strict JSON in, typed requests out, or a RequestError naming the field.

Everything a request asks for is checked here, against ServeSettings, before any work
starts: types (a JSON true is not a number, a float is not a count), ranges, NaN and
infinity (refused by the JSON reader itself), strings that are not valid Unicode, and the
sizes of prompts, stop lists and texts. Fields of OpenAI's API that charlm does not
implement are accepted only at their neutral value (presence_penalty 0, best_of equal to
n, ...), so a client never silently gets something else than it asked for; fields nobody
knows are ignored, as OpenAI's own server does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional

from charlm.inference.batch_sampling import RowSettings
from charlm.serve.settings import ServeSettings


class RequestError(Exception):
    """A request the server refuses: the HTTP status and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def type(self) -> str:
        return {
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            503: "server_error",
        }.get(  # fmt: skip
            self.status, "invalid_request_error"
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, problem: str) -> RequestError:
    return RequestError(400, f"{param} {problem}", param, "invalid_value")


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; bad UTF-8, bad JSON, NaN or a non-object is a 400."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {exc.start})", None, "invalid_json") from None

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc})", None, "invalid_json") from None
    if not isinstance(value, dict):
        raise RequestError(400, "the body must be a JSON object", None, "invalid_json")
    return value


class Fields:
    """Typed reads of one JSON object's fields, each error naming the field."""

    def __init__(self, body: dict[str, Any]):
        self.body = body

    def _get(self, name: str) -> Any:
        return self.body.get(name)

    def string(self, name: str, default: Optional[str] = None, required: bool = False, most: int = 0) -> Optional[str]:
        value = self._get(name)
        if value is None:
            if required:
                raise RequestError(400, f"{name} is required", name, "missing_field")
            return default
        if not isinstance(value, str):
            raise bad(name, f"must be a string (got {type_name(value)})")
        return check_text(name, value, most)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise bad(name, f"must be true or false (got {type_name(value)})")
        return value

    def integer(self, name: str, default: Optional[int], least: int, most: int) -> Optional[int]:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and least <= value <= most:
                return int(value)
            raise bad(name, f"must be a whole number (got {type_name(value)})")
        if not least <= value <= most:
            raise bad(name, f"must be from {least:,} to {most:,} (got {value:,})")
        return value

    def number(self, name: str, default: Optional[float], least: float, most: float) -> Optional[float]:
        value = self._get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(name, f"must be a number (got {type_name(value)})")
        value = float(value)
        if not math.isfinite(value) or not least <= value <= most:
            raise bad(name, f"must be from {least:g} to {most:g} (got {value!r})")
        return value

    def neutral(self, name: str, neutral_values: tuple[Any, ...], why: str) -> None:
        """A field of OpenAI's API that charlm does not implement: only its neutral value passes."""
        value = self._get(name)
        if value is None or (value in neutral_values and type(value) in {type(v) for v in neutral_values}):
            return
        raise RequestError(400, f"{name} is not supported by charlm ({why})", name, "unsupported_field")


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def check_text(name: str, text: str, most: int) -> str:
    """Refuse a string with lone surrogates (not Unicode text) or longer than `most` characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(name, "holds a lone surrogate escape (\\ud800-\\udfff), which is not text") from None
    if most and len(text) > most:
        raise bad(name, f"is {len(text):,} characters; the server takes at most {most:,}")
    return text


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str]
    max_tokens: int
    settings: RowSettings
    n: int
    stop: tuple[str, ...]
    seed: Optional[int]
    stream: bool
    echo: bool
    logprobs: Optional[int]
    include_usage: bool

    @property
    def streams(self) -> int:
        return len(self.prompts) * self.n


def read_completion(body: dict[str, Any], settings: ServeSettings) -> CompletionRequest:
    fields = Fields(body)
    model = fields.string("model", required=True)
    prompt = body.get("prompt", "")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        raise RequestError(400, "prompt as token ids is not supported; send the text", "prompt", "unsupported_field")
    else:
        raise bad("prompt", f"must be a string or a non-empty list of strings (got {type_name(prompt)})")
    if len(prompts) > settings.max_prompts:
        raise bad("prompt", f"holds {len(prompts):,} prompts; the server takes at most {settings.max_prompts:,}")
    for prompt_text in prompts:
        check_text("prompt", prompt_text, settings.max_prompt_chars)
    max_tokens = fields.integer("max_tokens", settings.default_max_tokens, 0, settings.max_tokens)
    n = fields.integer("n", 1, 1, settings.max_n)
    temperature = fields.number("temperature", 1.0, 0.0, 100.0)
    top_p = fields.number("top_p", None, 0.0, 1.0)
    if top_p is not None and top_p == 0.0:
        raise bad("top_p", "must be more than 0 (got 0.0); use greedy or temperature 0 for the most likely token")
    top_k = fields.integer("top_k", None, -1, 1 << 31)
    if top_k == 0 or top_k == -1:  # llama.cpp and vLLM clients send these for "no top-k"
        top_k = None
    greedy = fields.boolean("greedy", False)
    seed = fields.integer("seed", None, -(1 << 63), (1 << 63) - 1)
    stream = fields.boolean("stream", False)
    echo = fields.boolean("echo", False)
    logprobs = fields.integer("logprobs", None, 0, settings.max_logprobs)
    fields.string("user", most=256)
    stop = read_stop(body.get("stop"), settings)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise bad("stream_options", f"must be an object (got {type_name(options)})")
        include_usage = Fields(options).boolean("include_usage", False)
    fields.neutral("suffix", ("",), "a recurrent model only continues text")
    fields.neutral("presence_penalty", (0, 0.0), "no repetition penalties")
    fields.neutral("frequency_penalty", (0, 0.0), "no repetition penalties")
    fields.neutral("logit_bias", ({},), "no logit bias")
    fields.neutral("best_of", (n, float(n)), "best_of must equal n")
    return CompletionRequest(
        model=model,
        prompts=prompts,
        max_tokens=max_tokens,
        settings=RowSettings(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy),
        n=n,
        stop=stop,
        seed=seed,
        stream=stream,
        echo=echo,
        logprobs=logprobs,
        include_usage=include_usage,
    )


def read_stop(value: Any, settings: ServeSettings) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", f"must be a string or a list of strings (got {type_name(value)})")
    if len(stops) > settings.max_stop:
        raise bad("stop", f"holds {len(stops)} strings; the server takes at most {settings.max_stop}")
    for stop in stops:
        check_text("stop", stop, settings.max_stop_chars)
    return tuple(s for s in stops if s)


@dataclass(frozen=True)
class ScoreRequest:
    model: str
    text: str
    token_logprobs: bool


def model_and_text(fields: Fields, most: int, doing: str) -> tuple[str, str]:
    """The model and the non-empty text of a request that reads a text (score, inspect)."""
    model = fields.string("model", required=True)
    text = fields.string("text", required=True, most=most)
    if not text:
        raise bad("text", f"is empty; there is nothing to {doing}")
    return model, text


def read_score(body: dict[str, Any], settings: ServeSettings) -> ScoreRequest:
    fields = Fields(body)
    model, text = model_and_text(fields, settings.max_score_chars, "score")
    return ScoreRequest(model, text, fields.boolean("token_logprobs", False))


@dataclass(frozen=True)
class InspectRequest:
    model: str
    text: str
    layer: Optional[int]
    state: str
    unit: Optional[int]
    top: int


def read_inspect(body: dict[str, Any], settings: ServeSettings) -> InspectRequest:
    fields = Fields(body)
    model, text = model_and_text(fields, settings.max_inspect_chars, "inspect")
    layer = fields.integer("layer", None, 0, 1 << 20)
    state = fields.string("state", "hidden")
    unit = fields.integer("unit", None, 0, 1 << 30)
    top = fields.integer("top", 20, 1, 1000)
    return InspectRequest(model, text, layer, state, unit, top)
