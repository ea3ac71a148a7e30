"""What a checkpoint holds besides the weights: one TrainerState, the engine's and the task's.

Saved as last/trainer_state.pt (torch.save of `to_dict()`: tensors, numbers, strings, lists
and dicts only, so it loads with weights_only=True). The format number says how to read it:

    1  position, optimizer, scaler, torch's generators (rng_cpu, rng_cuda), carried state
    2  every generator (rng), guard, learning-rate scale, skip and rollback counts, the log
       accumulators, metrics.jsonl's length, a check of the training data (data)
    3  every process's generators (rng_ranks) and how many processes there were
    4  what the task keeps (its carried state, its data check) moves into "task", so the
       rest is the engine's alone

`from_dict` reads all four; formats 1-3 kept the language-model task's two entries at the
top level, and they are moved into `task` as format 4 holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

from charlm.errors import CharlmError, first_line

FORMAT = 4
READABLE_FORMATS = (1, 2, 3, 4)
# what formats 1-3 held at the top level for the language-model task
_OLD_TASK_KEYS = ("carried_state", "data")


def empty_log() -> dict[str, Any]:
    """The train-event accumulators since the last train event."""
    return {"loss_sum": 0.0, "good": 0, "skipped": 0}


@dataclass
class TrainerState:
    step: int
    epoch: int
    window: int  # batches done in this epoch
    tokens_seen: int
    elapsed: float
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]
    optimizer: dict[str, Any]
    scaler: Optional[dict[str, Any]]
    rng: dict[str, Any]  # rank 0's generators (rngstate.capture)
    rng_ranks: Optional[list[dict[str, Any]]] = None  # every process's, in rank order (torchrun)
    world_size: int = 1
    guard: dict[str, Any] = field(default_factory=dict)
    lr_scale: float = 1.0  # lowered by each rollback
    skipped_steps: int = 0
    rollbacks: int = 0
    log: dict[str, Any] = field(default_factory=empty_log)
    metrics_size: Optional[int] = None  # metrics.jsonl's length at the checkpoint (None: not recorded)
    task: dict[str, Any] = field(default_factory=dict)  # the task's own (Task.state_dict)

    def to_dict(self) -> dict[str, Any]:
        # not dataclasses.asdict, which would deep-copy every optimizer tensor
        return {"format": FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, saved: dict[str, Any], where: str = "the trainer state") -> TrainerState:
        """Read any readable format; CharlmError names `where` when the dict does not fit."""
        version = saved.get("format")
        if version not in READABLE_FORMATS:
            raise CharlmError(
                f"{where} has trainer-state format {version!r}, which this charlm cannot resume "
                f"(it reads {', '.join(map(str, READABLE_FORMATS))}); use the charlm that wrote it"
            )
        try:
            return cls._read(saved, version)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise damaged(where, exc) from None

    @classmethod
    def _read(cls, saved: dict[str, Any], version: int) -> TrainerState:
        if version == 1:  # torch's generators only
            rng = {"torch": saved["rng_cpu"], "cuda": saved.get("rng_cuda")}
        else:
            rng = saved["rng"]
        if version >= 4:
            task = dict(saved.get("task") or {})
        else:
            task = {key: saved[key] for key in _OLD_TASK_KEYS if saved.get(key) is not None}
        metrics_size = saved.get("metrics_size")
        return cls(
            step=int(saved["step"]),
            epoch=int(saved["epoch"]),
            window=int(saved["window"]),
            tokens_seen=int(saved["tokens_seen"]),
            elapsed=float(saved["elapsed"]),
            best_val_loss=saved["best_val_loss"],
            last_val_loss=saved["last_val_loss"],
            optimizer=saved["optimizer"],
            scaler=saved.get("scaler"),
            rng=rng,
            rng_ranks=saved.get("rng_ranks"),
            world_size=int(saved.get("world_size", 1)),
            guard=dict(saved.get("guard") or {}),
            lr_scale=float(saved.get("lr_scale", 1.0)),
            skipped_steps=int(saved.get("skipped_steps", 0)),
            rollbacks=int(saved.get("rollbacks", 0)),
            log=dict(saved.get("log") or empty_log()),
            metrics_size=None if metrics_size is None else int(metrics_size),
            task=task,
        )


def damaged(where: str, exc: BaseException) -> CharlmError:
    """The error for a trainer state that does not fit the run it is resumed into."""
    return CharlmError(
        f"{where} does not fit this run ({type(exc).__name__}: {first_line(exc)}); the checkpoint is damaged: "
        "start a new run with --overwrite (generate and perplexity still work)"
    )
