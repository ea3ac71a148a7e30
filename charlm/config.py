"""Configuration dataclasses and their plain-dict (JSON) form.

ModelShape is an RNNLM's shape as the options give it, before there is a vocabulary;
ModelConfig is that shape plus the vocabulary size, all it takes to build the model
(`shape.with_vocabulary(V)`, `config.shape`). TrainConfig says how to train one;
SampleConfig says how to pick the next token. Each validates itself and raises an
OptionError naming the field ("lr must be positive"), which the CLI shows with its flag.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from charlm.errors import CharlmError, OptionError, check

CELLS = ("lstm", "gru", "rnn-tanh", "rnn-relu")
CELL_ALIASES = {"rnn": "rnn-tanh"}
TOKENIZERS = ("char", "byte", "sentencepiece")
SPM_MODEL_TYPES = ("unigram", "bpe")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
ENCODING_ERRORS = ("strict", "replace")
DIVERGENCE_ACTIONS = ("skip", "rollback", "stop")
# standard: fresh dropout masks at every position; locked: one mask per lane for all T steps
DROPOUT_KINDS = ("standard", "locked")
# what a run trains: the next token of a text, or one label for a whole text
TASKS = ("language_model", "classify")

MAX_SEED = 1 << 63
MAX_SPM_VOCAB = 1_000_000
# Used when the user sets none of --max-steps, --max-time, --epochs.
DEFAULT_MAX_TIME_S = 300.0
# Tokens each validation pass during training scores at most (0: all); the closing one scores all.
DEFAULT_EVAL_TOKENS = 65_536


def _check_types(obj) -> None:
    """Whole numbers must be ints (a hand-edited config may say 1.5), floats may be ints."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in ("int", "Optional[int]") and (isinstance(value, bool) or not isinstance(value, int)):
            raise OptionError(f.name, f"must be a whole number (got {value!r})")
        if kind in ("float", "Optional[float]"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(f.name, f"must be a number (got {value!r})")
            if not math.isfinite(value):  # nan slips past every range check; inf is never meant
                raise OptionError(f.name, f"must be a finite number (got {value})")
        if kind == "bool" and not isinstance(value, bool):
            raise OptionError(f.name, f"must be true or false (got {value!r})")
        if kind in ("str", "Optional[str]") and not isinstance(value, str):
            raise OptionError(f.name, f"must be text (got {value!r})")


def _from_dict(cls, data: dict[str, Any], what: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CharlmError(
            f"{what} has unknown field(s) {', '.join(unknown)}; it was written by a newer or different charlm"
        )
    obj = cls(**data)
    obj.validate()
    return obj


class _Options:
    """to_dict / from_dict for the option dataclasses; from_dict validates."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _from_dict(cls, data, cls.__name__)


@dataclass
class ModelShape(_Options):
    """An RNNLM's shape without its vocabulary: embedding -> stacked recurrent cell -> output head."""

    cell: str = "lstm"
    layers: int = 2
    hidden: int = 384
    embed: int = 64
    dropout: float = 0.1
    tie_weights: bool = False
    # regularisers, all off by default; a config.json from before them loads with them off
    dropout_kind: str = "standard"  # how --dropout draws its masks: DROPOUT_KINDS
    weight_dropout: float = 0.0  # DropConnect on the hidden-to-hidden weights, one mask per batch
    embed_dropout: float = 0.0  # whole token types dropped from the embedding, per batch

    def __post_init__(self) -> None:
        self.cell = CELL_ALIASES.get(self.cell, self.cell)

    def validate(self) -> None:
        _check_types(self)
        check(self.cell in CELLS, "cell", f"must be one of {', '.join(CELLS)} (got {self.cell!r})")
        check(self.layers >= 1, "layers", f"must be at least 1 (got {self.layers})")
        check(self.hidden >= 1, "hidden", f"must be at least 1 (got {self.hidden})")
        check(self.embed >= 1, "embed", f"must be at least 1 (got {self.embed})")
        check(
            self.dropout_kind in DROPOUT_KINDS,
            "dropout_kind",
            f"must be one of {', '.join(DROPOUT_KINDS)} (got {self.dropout_kind!r})",
        )
        for name in ("dropout", "weight_dropout", "embed_dropout"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, name, f"must be in [0, 1) (got {value})")

    def with_vocabulary(self, vocab_size: int) -> "ModelConfig":
        """The whole model configuration, once the tokenizer says how many ids there are."""
        return ModelConfig(vocab_size=vocab_size, **self.to_dict())


@dataclass
class ModelConfig(_Options):
    """Everything it takes to build an RNNLM: its shape and its vocabulary size (V).

    The fields are ModelShape's plus vocab_size, in config.json's order."""

    vocab_size: int
    cell: str = ModelShape.cell
    layers: int = ModelShape.layers
    hidden: int = ModelShape.hidden
    embed: int = ModelShape.embed
    dropout: float = ModelShape.dropout
    tie_weights: bool = ModelShape.tie_weights
    dropout_kind: str = ModelShape.dropout_kind
    weight_dropout: float = ModelShape.weight_dropout
    embed_dropout: float = ModelShape.embed_dropout

    def __post_init__(self) -> None:
        self.cell = CELL_ALIASES.get(self.cell, self.cell)

    @property
    def shape(self) -> ModelShape:
        return ModelShape(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelShape)})

    def validate(self) -> None:
        _check_types(self)
        check(self.vocab_size >= 2, "vocab_size", f"must be at least 2 (got {self.vocab_size})")
        self.shape.validate()


@dataclass
class TrainConfig(_Options):
    """Everything about a training run except the model's shape."""

    # corpus and tokenizer
    data: str = "shakespeare"
    val_data: Optional[str] = None
    test_data: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    tokenizer: str = "char"
    vocab_size: int = 2000
    spm_model_type: str = "unigram"
    encoding_errors: str = "strict"
    # batching
    batch_size: int = 32
    seq_len: int = 128
    random_offset: bool = True
    # optimisation
    lr: float = 6e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # hardware
    precision: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None
    compile: bool = False
    seed: int = 1337
    # when to stop (whichever comes first); all None means DEFAULT_MAX_TIME_S
    max_steps: Optional[int] = None
    max_time: Optional[float] = None
    epochs: Optional[float] = None
    # the model's size (and batch and learning rate) chosen for the budget, unless given
    auto_size: bool = True
    # a language-model run whose weights, shape and tokenizer a new run starts from (fine-tuning)
    init_from: Optional[str] = None
    # cadence
    eval_every: int = 500
    eval_batch_size: int = 16
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    checkpoint_every: Optional[int] = 1000
    checkpoint_seconds: Optional[float] = 600.0
    log_every: int = 50
    sample_length: int = 400
    # divergence guard: what a step with a non-finite or spiking loss does
    on_divergence: str = "skip"
    spike_factor: float = 4.0
    skip_limit: int = 10
    max_rollbacks: int = 3
    rollback_lr_factor: float = 0.5

    def validate(self) -> None:
        _check_types(self)
        check(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1) (got {self.val_fraction})")
        check(0.0 <= self.test_fraction < 1.0, "test_fraction", f"must be in [0, 1) (got {self.test_fraction})")
        check(
            self.val_fraction + self.test_fraction < 1.0,
            "val_fraction",
            "plus --test-fraction must leave something to train on (their sum must be below 1)",
        )
        check(self.tokenizer in TOKENIZERS, "tokenizer", f"must be one of {', '.join(TOKENIZERS)}")
        check(self.spm_model_type in SPM_MODEL_TYPES, "spm_model_type", f"must be one of {', '.join(SPM_MODEL_TYPES)}")
        check(
            self.encoding_errors in ENCODING_ERRORS, "encoding_errors", f"must be one of {', '.join(ENCODING_ERRORS)}"
        )
        if self.tokenizer == "sentencepiece":
            check(
                self.vocab_size > 260,
                "vocab_size",
                f"must be above 260 for sentencepiece, which reserves 256 byte pieces (got {self.vocab_size})",
            )
            # SentencePiece ran for minutes without end at 2**31-1 in a trial; a million is plenty.
            check(
                self.vocab_size <= MAX_SPM_VOCAB,
                "vocab_size",
                f"must be at most {MAX_SPM_VOCAB:,} for sentencepiece (got {self.vocab_size:,})",
            )
        check(self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})")
        check(self.seq_len >= 1, "seq_len", f"must be at least 1 (got {self.seq_len})")
        check(self.lr > 0, "lr", f"must be positive (got {self.lr})")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1] (got {self.min_lr_ratio})")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be 0 or more (got {self.warmup_steps})")
        check(self.weight_decay >= 0, "weight_decay", f"must be 0 or more (got {self.weight_decay})")
        check(self.grad_clip >= 0, "grad_clip", f"must be 0 (off) or more (got {self.grad_clip})")
        check(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        check(self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}")
        check(0 <= self.seed < MAX_SEED, "seed", f"must be from 0 to {MAX_SEED - 1} (got {self.seed})")
        check(self.threads is None or self.threads >= 1, "threads", f"must be at least 1 (got {self.threads})")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be at least 1 (got {self.max_steps})")
        check(self.max_time is None or self.max_time > 0, "max_time", f"must be positive (got {self.max_time})")
        check(self.epochs is None or self.epochs > 0, "epochs", f"must be positive (got {self.epochs})")
        check(self.eval_every >= 1, "eval_every", f"must be at least 1 (got {self.eval_every})")
        check(self.eval_batch_size >= 1, "eval_batch_size", f"must be at least 1 (got {self.eval_batch_size})")
        check(self.eval_tokens >= 0, "eval_tokens", f"must be 0 (all) or more (got {self.eval_tokens})")
        check(
            self.checkpoint_every is None or self.checkpoint_every >= 1,
            "checkpoint_every",
            f"must be at least 1 (got {self.checkpoint_every})",
        )
        check(self.log_every >= 1, "log_every", f"must be at least 1 (got {self.log_every})")
        check(
            self.checkpoint_seconds is None or self.checkpoint_seconds > 0,
            "checkpoint_seconds",
            f"must be a positive time (got {self.checkpoint_seconds} s)",
        )
        check(
            self.on_divergence in DIVERGENCE_ACTIONS, "on_divergence", f"must be one of {', '.join(DIVERGENCE_ACTIONS)}"
        )
        check(
            self.spike_factor == 0 or self.spike_factor > 1,
            "spike_factor",
            f"must be 0 (off) or above 1 (got {self.spike_factor})",
        )
        check(self.skip_limit >= 1, "skip_limit", f"must be at least 1 (got {self.skip_limit})")
        check(self.max_rollbacks >= 0, "max_rollbacks", f"must be 0 or more (got {self.max_rollbacks})")
        check(
            0 < self.rollback_lr_factor <= 1, "rollback_lr_factor", f"must be in (0, 1] (got {self.rollback_lr_factor})"
        )
        check(self.sample_length >= 0, "sample_length", f"must be 0 or more (got {self.sample_length})")

    def stop_limits(self) -> tuple[Optional[int], Optional[float], Optional[float]]:
        """(max_steps, max_time, epochs) with the default time budget filled in."""
        if self.max_steps is None and self.max_time is None and self.epochs is None:
            return None, DEFAULT_MAX_TIME_S, None
        return self.max_steps, self.max_time, self.epochs


@dataclass
class SampleConfig(_Options):
    """How to choose each next token. temperature 0 means greedy."""

    temperature: float = 0.8
    top_k: Optional[int] = None
    top_p: Optional[float] = None

    def validate(self) -> None:
        _check_types(self)
        check(
            self.temperature >= 0 and math.isfinite(self.temperature),
            "temperature",
            f"must be 0 (greedy) or a finite positive number (got {self.temperature})",
        )
        check(self.top_k is None or self.top_k >= 1, "top_k", f"must be at least 1 (got {self.top_k})")
        check(self.top_p is None or 0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1] (got {self.top_p})")


@dataclass
class RunConfig:
    """What a run directory's config.json holds. A language-model run (task
    "language_model") has a ModelConfig; a classifier run (task "classify") a
    ClassifierConfig and its ClassifyConfig (charlm.classifier_config)."""

    model: Any  # ModelConfig, or ClassifierConfig for a classifier
    train: TrainConfig
    tokenizer_kind: str
    format_version: int = 1
    charlm_version: str = ""
    # what the tokenizer's ids stand for (tokenizer.fingerprint): a tokenizer.json from another
    # run with the same vocabulary size is still refused; empty in runs from before it was kept
    tokenizer_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "language_model"
    classify: Optional[Any] = None  # the ClassifyConfig of a classifier run

    @property
    def is_classifier(self) -> bool:
        return self.task == "classify"

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format_version": self.format_version,
            "charlm_version": self.charlm_version,
            "tokenizer_kind": self.tokenizer_kind,
            "tokenizer_fingerprint": self.tokenizer_fingerprint,
        }
        if self.is_classifier:  # a language-model run's config.json stays as it always was
            data["task"] = self.task
        data.update(model=self.model.to_dict(), train=self.train.to_dict())
        if self.classify is not None:
            data["classify"] = self.classify.to_dict()
        data["extra"] = self.extra
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        try:
            version = int(data.get("format_version", 0))
            if version != 1:
                raise CharlmError(
                    f"run config format {version} is not supported by this charlm (expects 1); upgrade charlm"
                )
            task = data.get("task", "language_model")
            if task not in TASKS:
                raise CharlmError(
                    f"its task {task!r} is not one this charlm knows ({', '.join(TASKS)}); upgrade charlm"
                )
            from charlm.classifier_config import ClassifierConfig, ClassifyConfig  # it builds on this module

            classifier = task == "classify"
            if classifier and not isinstance(data.get("classify"), dict):
                raise CharlmError("a classifier run's 'classify' section is missing or not a JSON object")
            return cls(
                task=task,
                model=(ClassifierConfig if classifier else ModelConfig).from_dict(dict(data["model"])),
                classify=ClassifyConfig.from_dict(dict(data["classify"])) if classifier else None,
                train=TrainConfig.from_dict(dict(data["train"])),
                tokenizer_kind=str(data["tokenizer_kind"]),
                format_version=version,
                charlm_version=str(data.get("charlm_version", "")),
                tokenizer_fingerprint=str(data.get("tokenizer_fingerprint", "")),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CharlmError(f"run config is damaged ({exc!r}); it cannot be loaded") from None
