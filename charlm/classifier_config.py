"""A classifier run's configuration: the model's shape with its labels, and how it is trained.

ClassifierConfig is all it takes to build a SequenceClassifier (vocabulary size, labels,
cell, widths, directions, pooling); ClassifyConfig holds what a classifier run adds to the
TrainConfig fields it shares with a language-model run (the data's fields, text length,
the selection metric, early stopping, class weights, transfer from a language model).
Both validate themselves like config.py's dataclasses, whose helpers they use; a run's
RunConfig (config.py) holds them under task "classify".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from charlm.config import CELL_ALIASES, CELLS, _check_types, _Options
from charlm.errors import check

# how a classifier turns the encoder's outputs over a text into one vector
POOLINGS = ("last", "mean", "max", "attention", "concat")
# the validation figure a classifier's best checkpoint (and early stopping) follows
SELECTION_METRICS = ("accuracy", "macro_f1")
# which part of a text longer than --max-length a classifier keeps
KEEP_SIDES = ("head", "tail")
CLASS_WEIGHTS = ("none", "auto")
MAX_CLASSES = 100_000


@dataclass
class ClassifierConfig(_Options):
    """Everything it takes to build a SequenceClassifier: embedding -> stacked recurrent
    encoder, one or two directions -> pooling over the text -> dropout -> linear to C classes.

    labels are the user's class names in the run's stable order; class i is labels[i]."""

    vocab_size: int
    labels: list = field(default_factory=list)
    cell: str = "lstm"
    layers: int = 1
    hidden: int = 128
    embed: int = 64
    dropout: float = 0.2
    bidirectional: bool = True
    pooling: str = "concat"

    def __post_init__(self) -> None:
        self.cell = CELL_ALIASES.get(self.cell, self.cell)

    @property
    def classes(self) -> int:
        return len(self.labels)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def validate(self) -> None:
        _check_types(self)
        check(self.vocab_size >= 2, "vocab_size", f"must be at least 2 (got {self.vocab_size})")
        check(self.cell in CELLS, "cell", f"must be one of {', '.join(CELLS)} (got {self.cell!r})")
        check(self.layers >= 1, "layers", f"must be at least 1 (got {self.layers})")
        check(self.hidden >= 1, "hidden", f"must be at least 1 (got {self.hidden})")
        check(self.embed >= 1, "embed", f"must be at least 1 (got {self.embed})")
        check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1) (got {self.dropout})")
        check(self.pooling in POOLINGS, "pooling", f"must be one of {', '.join(POOLINGS)} (got {self.pooling!r})")
        labels = self.labels
        check(
            isinstance(labels, list) and all(isinstance(label, str) for label in labels),
            "labels",
            "must be a list of class names",
        )
        check(2 <= len(labels) <= MAX_CLASSES, "labels", f"must name 2 to {MAX_CLASSES:,} classes (got {len(labels)})")
        check(len(set(labels)) == len(labels), "labels", "must not name a class twice")


@dataclass
class ClassifyConfig(_Options):
    """What a classifier run trains on and how, beyond the TrainConfig fields it shares with
    a language-model run (the stop limits, optimisation, guard, cadence, seed, tokenizer)."""

    text_field: Optional[str] = None  # None: the readers' defaults (text, sentence, ...)
    label_field: Optional[str] = None
    max_length: Optional[int] = None  # tokens kept of each text (None: all of it)
    keep: str = "head"  # which end of a longer text --max-length keeps
    metric: str = "accuracy"  # what the best checkpoint and early stopping follow
    patience: Optional[int] = None  # validations without improvement before stopping (None: never)
    class_weights: str = "none"  # auto: weigh each class's loss by the inverse of its frequency
    from_lm: Optional[str] = None  # the language-model run the embedding and encoder start from
    lm_checkpoint: str = ""  # which of its checkpoints they came from (best or last), recorded
    freeze_epochs: float = 0.0  # epochs in which only the new layers train (with --from-lm)
    lm_lr_factor: float = 1.0  # the transferred layers' learning rate, as a share of --lr
    eval_batch_size: int = 128

    def validate(self) -> None:
        _check_types(self)
        check(
            self.max_length is None or self.max_length >= 1, "max_length", f"must be at least 1 (got {self.max_length})"
        )
        check(self.keep in KEEP_SIDES, "keep", f"must be one of {', '.join(KEEP_SIDES)} (got {self.keep!r})")
        check(self.metric in SELECTION_METRICS, "metric", f"must be one of {', '.join(SELECTION_METRICS)}")
        check(self.patience is None or self.patience >= 1, "patience", f"must be at least 1 (got {self.patience})")
        check(self.class_weights in CLASS_WEIGHTS, "class_weights", f"must be one of {', '.join(CLASS_WEIGHTS)}")
        check(self.freeze_epochs >= 0, "freeze_epochs", f"must be 0 or more (got {self.freeze_epochs})")
        check(0.0 <= self.lm_lr_factor <= 1.0, "lm_lr_factor", f"must be in [0, 1] (got {self.lm_lr_factor})")
        check(self.eval_batch_size >= 1, "eval_batch_size", f"must be at least 1 (got {self.eval_batch_size})")
        if self.from_lm is None:
            check(self.freeze_epochs == 0, "freeze_epochs", "needs --from-lm: only transferred layers can be frozen")
