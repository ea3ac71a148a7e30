"""Scorer: score text with a trained model, as `charlm perplexity` does.

    scorer = Scorer("runs/mine")                      # or Scorer(model, tokenizer)
    scorer.score_text("To be, or not to be").bits_per_char

A whole text is scored as one stream (scoring.py's lanes method, with the run's own
validation lanes by default, so its figures match training's); lines can be scored each on
its own from a fresh state; a run's own test or validation split can be scored again; and a
text or split can be scored both statically and dynamically (score_dynamic, a Comparison).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from charlm.errors import CharlmError, check
from charlm.inference.dynamic import Comparison, DynamicSettings, score_tokens_dynamic
from charlm.inference.scoring import DEFAULT_LANES, DEFAULT_WINDOW, Score, score_sequences, score_tokens
from charlm.runs.open import open_run
from charlm.text.sources import TextCounter
from charlm.text.tokenizer import context_token_id, same_tokenizer


class Scorer:
    """Scores text with a trained model: whole texts, a run's own splits, or line by line.

    scorer = Scorer("runs/mine")
    scorer.score_text("To be, or not to be").bits_per_char
    """

    def __init__(
        self,
        source,
        tokenizer=None,
        device: torch.device = torch.device("cpu"),
        precision: str = "fp32",
        checkpoint: str = "auto",
        lanes: Optional[int] = None,
        window: int = DEFAULT_WINDOW,
    ):
        """source: a trained RNNLM (then pass its tokenizer) or the path of a run directory.
        lanes None: the run's validation lanes (--eval-batch-size), so its figures match."""
        self.run = None
        self.checkpoint = None
        if isinstance(source, (str, Path)):
            opened = open_run(source, checkpoint, device)
            self.run, self.config, self.checkpoint = opened.run, opened.config, opened.checkpoint
            source, tokenizer = opened.model, opened.tokenizer
            if lanes is None:
                lanes = self.config.train.eval_batch_size
        elif tokenizer is None:
            raise CharlmError("Scorer(model, tokenizer): a model needs its tokenizer")
        if lanes is None:
            lanes = DEFAULT_LANES
        check(lanes >= 1, "lanes", f"must be at least 1 (got {lanes})")
        check(window >= 1, "window", f"must be at least 1 (got {window})")
        self.model = source.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self.lanes = lanes
        self.window = window
        self.context_id = context_token_id(tokenizer)

    def _count_unknown(self, ids: np.ndarray) -> int:
        unk = self.tokenizer.unk_id
        if unk is None or self.tokenizer.kind != "char":
            return 0
        return int(np.count_nonzero(ids == unk))

    def score_ids(self, ids: np.ndarray, chars: int, nbytes: int, words: int, unknown: int = 0) -> Score:
        score = score_tokens(self.model, ids, self.context_id, self.lanes, self.window, self.device, self.precision)
        score.chars, score.bytes, score.words, score.unknown = chars, nbytes, words, unknown
        return score

    def score_text(self, text: Union[str, Iterable[str]]) -> Score:
        """Score a text (a string, or chunks of one cut at newlines) as one stream."""
        return self.score_ids(*self.encode_text(text))

    def encode_text(self, text: Union[str, Iterable[str]]) -> tuple[np.ndarray, int, int, int, int]:
        """What score_text scores: (ids, chars, bytes, words, unknown) of a text, or of chunks of one."""
        chunks = [text] if isinstance(text, str) else text
        counter = TextCounter()
        parts = []
        for chunk in chunks:
            counter.add(chunk)
            parts.append(self.tokenizer.encode(chunk))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if counter.chars == 0:
            raise CharlmError("nothing to score: the text is empty")
        return ids, counter.chars, counter.bytes, counter.words, self._count_unknown(ids)

    def score_lines(self, lines: Sequence[str], batch_size: int = 64) -> list[Score]:
        """Score each line on its own, from a fresh state (empty lines score zero tokens)."""
        encoded = [self.tokenizer.encode(line) for line in lines]
        totals = score_sequences(
            self.model, encoded, self.context_id, batch_size, self.window, self.device, self.precision
        )
        scores = []
        for line, ids, nll in zip(lines, encoded, totals):
            counter = TextCounter()
            counter.add(line)
            scores.append(
                Score(
                    nll=nll,
                    tokens=len(ids),
                    chars=counter.chars,
                    bytes=counter.bytes,
                    words=counter.words,
                    unknown=self._count_unknown(ids),
                )
            )
        return scores

    def score_split(self, split: str = "auto") -> tuple[str, Score]:
        """Score the run's own test split (or val with split='val'); auto takes test, else val."""
        split, encoded = self.encode_split(split)
        return split, self.score_ids(*encoded)

    def encode_split(self, split: str) -> tuple[str, tuple[np.ndarray, int, int, int, int]]:
        """What score_split scores: the split's name (auto resolved) and its (ids, chars, bytes, words, unknown)."""
        if self.run is None:
            raise CharlmError("scoring a run's split needs a Scorer made from a run directory")
        from charlm.text.corpus import prepare_corpus_for

        # a run started from another (--init-from) encoded its text with that run's tokenizer
        given = self.tokenizer if self.config.train.init_from else None
        corpus = prepare_corpus_for(self.config.train, use_tokenizer=given)
        if not same_tokenizer(corpus.tokenizer, self.tokenizer):
            raise CharlmError("the run's corpus now gives a different vocabulary; score it with --data instead")
        if split == "auto":
            split = "test" if len(corpus.splits["test"]) else "val"
        if not len(corpus.splits[split]):
            raise CharlmError(f"the run has no {split} split; pass --data to score a text")
        return split, (
            corpus.splits[split], corpus.chars[split], corpus.bytes[split], corpus.words[split], corpus.unknown[split]
        )  # fmt: skip

    def score_dynamic(
        self,
        text: Union[str, Iterable[str], None] = None,
        settings: DynamicSettings = DynamicSettings(),
        split: str = "auto",
        label: Optional[str] = None,
    ) -> Comparison:
        """Score a text (None: the run's split, as score_split) twice from one encoding: with
        the trained weights, then adapting a copy of them as it goes (inference/dynamic.py).
        The model itself is left as it was. label: what the Comparison calls the text."""
        settings.validate()
        if text is None:
            split, encoded = self.encode_split(split)
            label = label or split
        else:
            encoded = self.encode_text(text)
            label = label or "text"
        started = time.perf_counter()
        static = self.score_ids(*encoded)
        middle = time.perf_counter()
        ids, *counts = encoded
        dynamic = score_tokens_dynamic(
            self.model, ids, self.context_id, settings, self.lanes, self.device, self.precision
        )
        dynamic.chars, dynamic.bytes, dynamic.words, dynamic.unknown = counts
        return Comparison(label, static, dynamic, settings, middle - started, time.perf_counter() - middle)
