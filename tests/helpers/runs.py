"""Real training for tests: tiny runs trained into real run directories, and what they leave.

train_tiny_run() writes a text, prepares it and trains a one-layer LSTM with the real Trainer
(one CPU thread, fp32); new_trainer() / resumed_trainer() hand a test the Trainer itself, as
`charlm train` and `charlm train --resume` build it. read_events() and friends read
metrics.jsonl back; same_weights() compares two models bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file

from charlm.config import ModelConfig, RunConfig, TrainConfig
from charlm.runs.directory import LAST, METRICS_FILE, WEIGHTS_FILE, RunDirectory
from charlm.tasks.language_model import Trainer
from charlm.text.corpus import PreparedCorpus, prepare_corpus

from .texts import write_text

CPU = torch.device("cpu")
# A one-layer LSTM small enough to train in a second or two.
MODEL_DEFAULTS = dict(cell="lstm", layers=1, hidden=32, embed=16, dropout=0.0, tie_weights=False)
# new_trainer's training options: ten steps of 4 x 12 tokens, logged every step.
TRAIN_DEFAULTS = dict(
    batch_size=4, seq_len=12, lr=5e-3, warmup_steps=5, max_steps=10, eval_every=1000,
    checkpoint_every=1000, log_every=1, eval_batch_size=4, random_offset=True,
)  # fmt: skip


def train_into(path: Path, corpus: PreparedCorpus, model_config: ModelConfig, train_config: TrainConfig):
    """Train a small model for real into a new run directory at path (one CPU thread, fp32);
    returns the Trainer's result."""
    run = RunDirectory(path)
    run.prepare()
    run.save_tokenizer(corpus.tokenizer)
    run.write_config(RunConfig(model=model_config, train=train_config, tokenizer_kind=corpus.tokenizer.kind))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    try:
        return Trainer(model_config, train_config, corpus, run, CPU, "fp32").run()
    finally:
        torch.set_num_threads(previous)


def train_tiny_run(
    root: Path,
    text: str,
    *,
    tokenizer: str = "char",
    vocab_size: int = 2000,
    val_fraction: float = 0.1,
    model: Optional[dict[str, Any]] = None,
    **train: Any,
) -> Path:
    """Write text to root/corpus.txt and train a tiny LSTM (MODEL_DEFAULTS, updated by model)
    on it into root/run, with the token cache in root/cache. train: TrainConfig options
    (max_steps required); fp32 on the CPU, no sample. Checks that it ran to max_steps."""
    data = write_text(root / "corpus.txt", text)
    corpus = prepare_corpus(str(data), val_fraction=val_fraction, tokenizer=tokenizer, vocab_size=vocab_size,
                            cache_root=root / "cache")  # fmt: skip
    model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **{**MODEL_DEFAULTS, **(model or {})})
    options = dict(precision="fp32", device="cpu", sample_length=0, **train)
    train_config = TrainConfig(data=str(data), val_fraction=val_fraction, tokenizer=tokenizer, vocab_size=vocab_size,
                               **options)  # fmt: skip
    train_config.validate()
    result = train_into(root / "run", corpus, model_config, train_config)
    assert (result.step, result.reason) == (train_config.max_steps, "max_steps")
    return root / "run"


def make_corpus(folder: Path, text: str, val_text: Optional[str] = None, val_fraction: float = 0.1) -> PreparedCorpus:
    """folder/corpus.txt (and folder/val.txt, when given) prepared with the char tokenizer,
    cached in folder/cache."""
    path = write_text(folder / "corpus.txt", text)
    val_data = None if val_text is None else str(write_text(folder / "val.txt", val_text))
    return prepare_corpus(
        str(path), val_data=val_data, val_fraction=val_fraction, tokenizer="char", cache_root=folder / "cache"
    )


def new_trainer(
    run_path: Path,
    corpus: PreparedCorpus,
    model: Optional[dict[str, Any]] = None,
    train: Optional[dict[str, Any]] = None,
    precision: str = "fp32",
    events: Optional[list] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    seed: int = 0,
    **trainer_options: Any,
) -> Trainer:
    """A Trainer on a freshly prepared run directory (config and tokenizer written), with
    MODEL_DEFAULTS and TRAIN_DEFAULTS updated by model and train; events collects what it
    reports; trainer_options go to Trainer (faults, check_every)."""
    mc = ModelConfig(vocab_size=corpus.tokenizer.vocab_size, **{**MODEL_DEFAULTS, **(model or {})})
    tc = TrainConfig(**{**TRAIN_DEFAULTS, **(train or {})})
    tc.validate()
    run = RunDirectory(run_path)
    run.prepare()
    run.save_tokenizer(corpus.tokenizer)
    run.write_config(RunConfig(model=mc, train=tc, tokenizer_kind=corpus.tokenizer.kind))
    torch.manual_seed(seed)
    return Trainer(mc, tc, corpus, run, CPU, precision, on_event=_sink(events), should_stop=should_stop,
                   **trainer_options)  # fmt: skip


def resumed_trainer(
    run_path: Path,
    corpus: PreparedCorpus,
    events: Optional[list] = None,
    scramble_seed: int = 999,
    **limits: Any,
) -> Trainer:
    """A new Trainer on an existing run, as `charlm train --resume` builds it, then resume();
    limits replace the run's TrainConfig values."""
    run = RunDirectory(run_path)
    run.prepare(resume=True)
    config = run.read_config()
    for name, value in limits.items():
        setattr(config.train, name, value)
    config.train.validate()
    torch.manual_seed(scramble_seed)  # the global RNG must come from the checkpoint, not from here
    trainer = Trainer(config.model, config.train, corpus, run, CPU, "fp32", on_event=_sink(events))
    trainer.resume()
    return trainer


def _sink(events: Optional[list]):
    return events.append if events is not None else None


def read_events(run_dir: Path, strict: bool = True) -> list[dict]:
    """metrics.jsonl as a list of dicts. strict: the file exists and every line is one JSON
    object; otherwise a missing file is no events and a torn line (a writer half way through
    it) is skipped."""
    path = run_dir / METRICS_FILE
    if not strict and not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            if strict:
                raise AssertionError(f"{METRICS_FILE} line is not JSON: {line!r}") from None
            continue
        assert isinstance(event, dict), line
        events.append(event)
    return events


def of_kind(events: list[dict], kind: str) -> list[dict]:
    """The events of one kind ("train", "eval", "end", ...), in order."""
    return [e for e in events if e["event"] == kind]


def kinds(events: list[dict]) -> list[str]:
    """The kind of each event, in order."""
    return [event["event"] for event in events]


def end_event(run_dir: Path) -> dict:
    """The last end event of a run (there must be one)."""
    ends = of_kind(read_events(run_dir), "end")
    assert ends, f"no end event in {run_dir / METRICS_FILE}"
    return ends[-1]


def read_config(run_dir: Path) -> dict:
    """config.json of a run, as plain JSON."""
    return json.loads((run_dir / "config.json").read_text(encoding="utf-8"))


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """The two models hold the same tensors, bit for bit, under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def checkpoint_weights(run_dir: Path, which: str = LAST) -> dict[str, torch.Tensor]:
    """The tensors of a run's checkpoint (last or best), read straight from its safetensors file."""
    return load_file(str(run_dir / which / WEIGHTS_FILE))
