"""The runs a server holds: each loaded once, with its worker, its description and its curve.

`load_models({"mine": "runs/mine"}, device)` opens every run before the server starts, so a
wrong path or a classifier run is one error line at start-up, not a 500 later. A served
model answers /v1/models (its shape, tokenizer and training figures), /v1/models/{id}/metrics
(the training curve, read from metrics.jsonl when asked, so a run still training shows its
progress), and the score and inspect requests. Those run in a thread of their own, one at a
time per model, beside the generation worker: a long text to score slows the streams by
sharing the CPU but never stops them (the model's weights are only read, so both may use it).
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from charlm.errors import CharlmError
from charlm.inference.generate import Generator
from charlm.inference.inspection import inspect_units, state_names, token_logprobs
from charlm.inference.scorer import Scorer
from charlm.runs.directory import RunDirectory
from charlm.runs.open import open_run
from charlm.serve.requests import InspectRequest, RequestError, ScoreRequest, bad
from charlm.serve.worker import ModelWorker
from charlm.text.sources import TextCounter
from charlm.text.tokenizer import context_token_id

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def model_names(specs: list[str]) -> dict[str, Path]:
    """RUN or NAME=RUN arguments -> {name: path}; the name defaults to the run folder's name."""
    models: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not NAME.match(name):
            name, path = Path(spec).resolve().name, spec
        if not NAME.match(name):
            raise CharlmError(f"cannot name a model {name!r}; serve it as NAME={spec} with letters, digits, . _ : -")
        if name in models:
            raise CharlmError(f"two runs would be served as {name!r}; name one of them: NAME={spec}")
        models[name] = Path(path)
    if not models:
        raise CharlmError("give at least one run to serve")
    return models


class ServedModel:
    """One language-model run in memory: its generator, worker and what /v1/models says of it."""

    def __init__(self, name: str, path: Union[str, Path], device: torch.device):
        self.name = name
        opened = open_run(path, "auto", device)  # refuses a classifier run with the way out
        self.run: RunDirectory = opened.run
        self.config = opened.config
        self.generator = Generator(opened.model, opened.tokenizer, device)
        self.generator.checkpoint = opened.checkpoint
        self.scorer = Scorer(opened.model, opened.tokenizer, device, lanes=self.config.train.eval_batch_size)
        self.worker = ModelWorker(name, self.generator)
        self.analysis = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"charlm-analysis-{name}")
        self.created = int(self.run.path.stat().st_mtime)

    @property
    def tokenizer(self):
        return self.generator.tokenizer

    def describe(self) -> dict[str, Any]:
        model = self.config.model
        parameters = sum(p.numel() for p in self.generator.model.parameters())
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "charlm",
            "charlm": {
                "cell": model.cell,
                "layers": model.layers,
                "hidden": model.hidden,
                "embed": model.embed,
                "parameters": parameters,
                "checkpoint": self.generator.checkpoint,
                "tokenizer": {"kind": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size},
                "training": self.training_figures(),
            },
        }

    def training_figures(self) -> dict[str, Any]:
        """The run's steps, time and validation losses, from its journal."""
        steps = elapsed = val_loss = best = None
        for event in self.run.read_metrics():
            kind = event.get("event")
            if kind in ("train", "eval", "end") and isinstance(event.get("step"), int):
                steps = event["step"]
                elapsed = event.get("elapsed", elapsed)
            if kind == "eval" and _finite(event.get("loss")):
                val_loss = event["loss"]
                best = val_loss if best is None else min(best, val_loss)
        return {"steps": steps, "elapsed": elapsed, "val_loss": val_loss, "best_val_loss": best}

    def curve(self) -> dict[str, Any]:
        """Train and validation loss against step and time, for the playground's chart."""
        train, val = [], []
        for event in self.run.read_metrics():
            point = {"step": event.get("step"), "elapsed": event.get("elapsed"), "loss": event.get("loss")}
            if not isinstance(point["step"], int) or not _finite(point["loss"]):
                continue
            if event.get("event") == "train":
                train.append(point)
            elif event.get("event") == "eval" and event.get("split", "val") == "val":
                val.append(point)
        return {"object": "metrics", "model": self.name, "train": train, "val": val}

    # ----- work done in the analysis thread --------------------------------------------
    def score(self, request: ScoreRequest) -> dict[str, Any]:
        score = self.scorer.score_text(request.text)
        result: dict[str, Any] = {
            "object": "score",
            "model": self.name,
            "tokens": score.tokens,
            "chars": score.chars,
            "bytes": score.bytes,
            "loss": score.loss,
            "perplexity": score.perplexity,
            "bits_per_token": score.bits_per_token,
            "bits_per_char": score.bits_per_char,
            "bits_per_byte": score.bits_per_byte,
            "token_logprobs": None,
        }
        if request.token_logprobs:
            ids = self.tokenizer.encode(request.text)
            logprobs = token_logprobs(self.generator.model, ids, context_token_id(self.tokenizer))
            result["token_logprobs"] = [
                {"text": text, "logprob": float(lp), "offset": offset}
                for (text, offset), lp in zip(self.token_spans(request.text, ids), logprobs)
            ]
        return result

    def inspect(self, request: InspectRequest) -> dict[str, Any]:
        model = self.config.model
        layer = model.layers - 1 if request.layer is None else request.layer
        if layer >= model.layers:
            raise bad("layer", f"must be from 0 to {model.layers - 1} for this model (got {layer})")
        names = state_names(model.cell)
        if request.state not in names:
            raise bad("state", f"must be {' or '.join(names)} for a {model.cell} model (got {request.state!r})")
        ids = self.tokenizer.encode(request.text)
        trace = inspect_units(self.generator.model, ids, context_token_id(self.tokenizer), layer, request.state)
        ranking = trace.ranking(request.top)
        unit = ranking["active"][0][0] if request.unit is None else request.unit
        if unit >= model.hidden:
            raise bad("unit", f"must be from 0 to {model.hidden - 1} for this model (got {unit})")
        counter = TextCounter()
        counter.add(request.text)
        nll = -float(trace.logprobs.sum())
        return {
            "object": "inspection",
            "model": self.name,
            "layers": model.layers,
            "units": model.hidden,
            "states": names,
            "layer": layer,
            "state": request.state,
            "unit": unit,
            "tokens": [
                {"text": text, "offset": offset, "logprob": float(lp)}
                for (text, offset), lp in zip(self.token_spans(request.text, ids), trace.logprobs)
            ],
            "bits_per_char": nll / (counter.chars * math.log(2)) if counter.chars else None,
            "activations": [round(float(v), 5) for v in trace.activations[:, unit]],
            "ranking": {name: [{"unit": u, "score": round(s, 5)} for u, s in units] for name, units in ranking.items()},
        }

    def token_spans(self, text: str, ids: np.ndarray) -> list[tuple[str, int]]:
        """Each token's text and its character offset in text.

        A character model has a token per character, the unknown ones included, so the
        text's own characters are used. Otherwise the tokens are decoded (bytes and
        SentencePiece spell the text exactly); a character split over several tokens is
        given to the token that ends it, the others getting empty text at its offset."""
        if self.tokenizer.kind == "char" and len(ids) == len(text):
            return [(ch, i) for i, ch in enumerate(text)]
        spans = []
        offset = 0
        decoder = self.generator.tokenizer
        pieces = decoder.token_bytes()
        pending = b""
        for token in np.asarray(ids).tolist():
            pending += pieces[token]
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason == "unexpected end of data" and len(pending) < 4:
                    spans.append(("", offset))
                    continue
                text = pending.decode("utf-8", errors="replace")
            pending = b""
            spans.append((text, offset))
            offset += len(text)
        return spans


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_models(runs: dict[str, Union[str, Path]], device: torch.device) -> dict[str, ServedModel]:
    """Open every run; refuse one that is not a language model, with its name."""
    return {name: ServedModel(name, path, device) for name, path in runs.items()}


def find_model(models: dict[str, ServedModel], name: Optional[str]) -> ServedModel:
    if name not in models:
        served = ", ".join(sorted(models))
        raise RequestError(404, f"the model {name!r} is not served here (served: {served})", "model", "model_not_found")
    return models[name]
