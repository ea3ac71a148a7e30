"""The training loop: stateful truncated BPTT with AdamW, warmup + cosine, clipping, autocast.

One step takes the next (B, T) window of every lane (batching.py), runs the model from the
state the previous window left, backpropagates through those T steps only, clips the
gradient norm, steps the optimizer, and detaches the state for the next window. The state
is reset to zero at each epoch start, where the lanes start over.

The learning rate follows optim.py's warmup + cosine schedule over the run's budget.

Every step is judged by the divergence guard (guard.py) before its update: a NaN/inf loss
or gradient, or a loss spike, skips the update; `skip_limit` bad steps in a row roll the
run back to its last checkpoint with the learning rate scaled by `rollback_lr_factor`; the
run gives up, with its last checkpoint intact, only after `max_rollbacks` rollbacks in a
row (or at once with on_divergence "stop"). Running out of memory saves the run when the
weights are consistent and ends with a message that says how to continue.

The guard judges on the device, and fused AdamW skips a bad update on the device's verdict,
so a step never waits for the GPU. The host reads the steps' records back every
`check_every` steps (and before any log line, evaluation or checkpoint) and reacts then:
on the CPU that is every step, on a GPU every `log_every` steps.

Under torchrun (distributed.py) every process runs this same loop on its share of the B
lanes, with the model in DistributedDataParallel: the loss the guard judges is the mean
over all processes, host decisions (stop, elapsed time, checkpoint due) are agreed every
step, validation NLL is summed over processes, and only rank 0 writes the run directory;
a checkpoint gathers every process's carried state and RNG first.

Checkpoints (every `checkpoint_every` steps or `checkpoint_seconds`, at each evaluation,
on interrupt, and at step 0 of a fresh run) hold everything a resume needs: weights,
optimizer, schedule position, every RNG, data position, carried state, guard and log
accumulators, a fingerprint of the training split, and the length of metrics.jsonl at
that moment, so a resumed run continues the metrics without a gap or a repeat.

The trainer never prints. It reports every event as a dict to `on_event` and appends it to
the run's metrics.jsonl; it asks `should_stop()` once per step (the CLI sets that on Ctrl-C).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CharlmError, first_line
from charlm.hardware import autocast
from charlm.inference.scoring import DEFAULT_WINDOW, score_tokens
from charlm.models.rnnlm import RNNLM, detach_state, state_from_tensors, state_tensors
from charlm.runs.directory import BEST, LAST, METRICS_FILE, STATE_FILE, RunDirectory
from charlm.tasks.lanes import LaneBatcher
from charlm.text.corpus import PreparedCorpus
from charlm.text.tokenizer import context_token_id
from charlm.training import distributed, rngstate
from charlm.training.distributed import SINGLE, World
from charlm.training.faults import FaultPlan, OutOfMemory
from charlm.training.guard import DivergenceGuard, StepRecord
from charlm.training.optim import build_optimizer, learning_rate

STATE_FORMAT = 3
READABLE_STATE_FORMATS = (1, 2, 3)


@dataclass
class TrainResult:
    step: int
    reason: str  # max_steps, max_time, epochs, interrupted
    elapsed: float
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CUDA OOM error, or the CPU allocator's RuntimeError."""
    if isinstance(exc, OutOfMemory):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of a model's weights, bit for bit: equal on every process, or DDP went wrong."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint(tokens: np.ndarray, block: int = 1 << 24) -> str:
    """A hash of a token array's contents, to tell on resume whether the corpus changed."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(tokens.dtype).encode())
    for start in range(0, len(tokens), block):
        digest.update(np.ascontiguousarray(tokens[start : start + block]))
    return digest.hexdigest()


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        corpus: PreparedCorpus,
        run_dir: RunDirectory,
        device: torch.device,
        precision: str,
        on_event: Optional[Callable[[dict[str, Any]], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None,
        faults: Optional[FaultPlan] = None,
        world: World = SINGLE,
        check_every: Optional[int] = None,
    ):
        """check_every: steps between host reads of the guard's records (default: 1 on a
        single CPU process, where reading costs nothing, else log_every)."""
        self.config = config
        self.corpus = corpus
        self.run_dir = run_dir
        self.device = device
        self.precision = precision
        self.world = world
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.faults = faults or FaultPlan()
        distributed.check_lane_share(config.batch_size, world.size)
        if check_every is None:
            check_every = 1 if device.type == "cpu" and not world.distributed else config.log_every
        self.check_every = max(1, check_every)

        # initial weights: the same on every process (DDP checks it); dropout masks differ by rank
        torch.manual_seed(config.seed)
        self.model = RNNLM(model_config).to(device)
        if world.rank:
            torch.manual_seed(distributed.rank_seed(config.seed, world.rank))
        self.optimizer = build_optimizer(self.model, config)
        self._fused = bool(self.optimizer.defaults.get("fused"))
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        self.forward_model: torch.nn.Module = self.model  # what the step calls: maybe DDP, maybe compiled
        if world.distributed:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.lanes = distributed.lane_range(world, config.batch_size)
        self.batcher = LaneBatcher(
            corpus.splits["train"], config.batch_size, config.seq_len, seed=config.seed,
            random_offset=config.random_offset, lanes=self.lanes, pin_memory=(device.type == "cuda"),
        )  # fmt: skip
        self.val_tokens = corpus.splits["val"]
        self.context_id = context_token_id(corpus.tokenizer)
        self.max_steps, self.max_time, self.max_epochs = config.stop_limits()
        # fp16's GradScaler handles non-finite gradients itself (it skips the step, lowers the scale)
        self.guard = DivergenceGuard(config.spike_factor, check_gradient=(precision != "fp16"), device=device)
        self._data_fingerprint: Optional[str] = None

        # position and history; all of it goes into the trainer state
        self.step = 0
        self.epoch = 0
        self.window = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.state = None  # carried recurrent state
        self.lr_scale = 1.0  # lowered by each rollback
        self.skipped_steps = 0
        self.rollbacks = 0
        self.metrics_size = 0  # metrics.jsonl's length at the last checkpoint
        self._log = {"loss_sum": 0.0, "good": 0, "skipped": 0}  # since the last train event

        # this session only
        self.last_checkpoint_step: Optional[int] = None
        self._last_save_clock = time.monotonic()
        self._rollbacks_in_a_row = 0
        self._recovering_until = 0
        self._updating = False
        self._checkpoint_owed = False
        self._pending: list[torch.Tensor] = []  # guard records of steps not yet read back
        self._streak = 0  # bad steps in a row, as of the last read-back
        self._last_grad_norm = 0.0
        self._interrupted = False  # agreed by every process
        self._since_save = 0.0  # seconds since the last checkpoint, agreed by every process

    def close(self) -> None:
        """Let go of the DDP wrapper: gloo aborts a process that still holds one while its
        process group is taken down."""
        self.forward_model = self.model

    # ----- persistence ----------------------------------------------------------------
    def data_fingerprint(self) -> str:
        if self._data_fingerprint is None:
            self._data_fingerprint = fingerprint(self.corpus.splits["train"])
        return self._data_fingerprint

    def _gather_for_checkpoint(self) -> tuple[Optional[list[torch.Tensor]], list[dict[str, Any]]]:
        """(the carried state of all B lanes on the CPU, every process's RNG states), both in
        rank order. Under torchrun every process must call this together."""
        mine = [t.cpu() for t in state_tensors(self.state)] if self.state is not None else None
        shares = distributed.gather(self.world, mine)
        rngs = distributed.gather(self.world, rngstate.capture(self.device))
        if any(share is None for share in shares):
            return None, rngs  # an epoch start: every process starts from zeros
        return [torch.cat([share[i] for share in shares], dim=1) for i in range(len(shares[0]))], rngs  # (L, B, H)

    def trainer_state(self, gathered: Optional[tuple[Optional[list[torch.Tensor]], list[dict[str, Any]]]] = None
                      ) -> dict[str, Any]:  # fmt: skip
        """Everything a resume needs; `gathered` is _gather_for_checkpoint's result (taken
        here when not given, which under torchrun only works called on every process)."""
        carried, rngs = gathered if gathered is not None else self._gather_for_checkpoint()
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "window": self.window,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rngs[0],
            "rng_ranks": rngs if len(rngs) > 1 else None,
            "world_size": self.world.size,
            "carried_state": carried,
            "guard": self.guard.state_dict(),
            "lr_scale": self.lr_scale,
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
            "log": dict(self._log),
            "metrics_size": self.metrics_size,
            "data": {
                "train_tokens": int(len(self.corpus.splits["train"])),
                "fingerprint": self.data_fingerprint(),
                "lane_offset": self.batcher.offset(self.epoch),
            },
        }

    def load_trainer_state(self, saved: dict[str, Any], keep_elapsed: bool = False) -> None:
        where = f"{self.run_dir.path / LAST / STATE_FILE}"
        if saved.get("format") not in READABLE_STATE_FORMATS:
            raise CharlmError(
                f"{where} has trainer-state format {saved.get('format')!r}, which this charlm cannot resume "
                f"(it reads {', '.join(map(str, READABLE_STATE_FORMATS))}); use the charlm that wrote it"
            )
        try:
            self.step, self.epoch, self.window = int(saved["step"]), int(saved["epoch"]), int(saved["window"])
            self.tokens_seen = int(saved["tokens_seen"])
            if not keep_elapsed:
                self.elapsed = float(saved["elapsed"])
            self.best_val_loss, self.last_val_loss = saved["best_val_loss"], saved["last_val_loss"]
            self.optimizer.load_state_dict(saved["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CharlmError(
                f"{where} does not fit this run ({type(exc).__name__}: {first_line(exc)}); the checkpoint is damaged: "
                "start a new run with --overwrite (generate and perplexity still work)"
            ) from None
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
        self._restore_rng(saved)
        carried = saved.get("carried_state")
        if carried:
            first, last = self.lanes
            if carried[0].shape[1] != self.config.batch_size:
                raise CharlmError(
                    f"{where} holds a carried state for {carried[0].shape[1]} lanes, not {self.config.batch_size}; "
                    "the checkpoint is damaged: start a new run with --overwrite"
                )
            mine = [t[:, first:last].contiguous().to(self.device) for t in carried]  # this process's lanes
            self.state = state_from_tensors(mine, self.model.config.cell)
        else:
            self.state = None
        self.guard.load_state_dict(saved.get("guard", {}))
        self.lr_scale = float(saved.get("lr_scale", 1.0))
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.rollbacks = int(saved.get("rollbacks", 0))
        self._log = dict(saved.get("log") or {"loss_sum": 0.0, "good": 0, "skipped": 0})
        self.metrics_size = int(saved.get("metrics_size", 0))
        self.last_checkpoint_step = self.step

    def _restore_rng(self, saved: dict[str, Any]) -> None:
        ranks = saved.get("rng_ranks")
        if ranks and len(ranks) == self.world.size:
            rngstate.restore(ranks[self.world.rank], self.device)
        elif self.world.is_main and "rng" in saved:
            rngstate.restore(saved["rng"], self.device)
        elif self.world.is_main:  # format 1 kept torch's generators only
            rngstate.restore({"torch": saved["rng_cpu"], "cuda": saved.get("rng_cuda")}, self.device)
        else:  # saved by another number of processes: this one's dropout draws start afresh
            torch.manual_seed(distributed.rank_seed(self.config.seed + int(saved["step"]), self.world.rank))

    def _restore_last_checkpoint(self, keep_elapsed: bool = False) -> dict[str, Any]:
        """Weights and trainer state of the last checkpoint. Only rank 0 reads the run
        directory; under torchrun it sends what it read to the others."""
        weights = saved = None
        if self.world.is_main:
            saved = self.run_dir.load_trainer_state()
            model, _ = self.run_dir.load_model(LAST, device="cpu")
            weights = model.state_dict()
        weights, saved = distributed.broadcast(self.world, (weights, saved))
        self.model.load_state_dict(weights)
        if self.device.type == "cuda":
            self.model.rnn.flatten_parameters()  # keep cuDNN's single weight buffer
        self.load_trainer_state(saved, keep_elapsed=keep_elapsed)
        self._pending = []
        self._streak = self.guard.bad_streak
        return saved

    def _check_same_data(self, saved: dict[str, Any]) -> None:
        data = saved.get("data")
        if not data:
            return  # written before charlm recorded it
        then, now = int(data["train_tokens"]), int(len(self.corpus.splits["train"]))
        if then != now or data["fingerprint"] != self.data_fingerprint():
            change = f"{then:,} tokens then, {now:,} now" if then != now else "same length, different text"
            raise CharlmError(
                f"the training text changed since this run was checkpointed at step {self.step} ({change}); "
                "an exact resume needs the same corpus: restore it, or start a new run"
            )

    def resume(self, changed: Optional[dict[str, Any]] = None) -> None:
        """Continue from the run directory's last checkpoint: weights, optimizer, RNG, position.

        Temporary files a killed process left are removed, and metrics.jsonl is rewound to
        the checkpoint, so the resumed run logs each step exactly once. `changed` (option:
        [old, new]) is recorded in the resume event."""
        removed = self.run_dir.remove_leftovers() if self.world.is_main else []
        saved = self._restore_last_checkpoint()
        self._check_same_data(saved)
        if changed and "lr" in changed:
            self.lr_scale = 1.0  # a new --lr replaces the rate that rollbacks lowered
        dropped = self.run_dir.rewind_metrics(self.metrics_size) if "metrics_size" in saved and self.world.is_main else 0
        event = {"event": "resume", "step": self.step, "epoch": self.epoch, "window": self.window}
        if changed:
            event["changed"] = changed
        if dropped:
            event["discarded_events"] = dropped
        if removed:
            event["removed_leftovers"] = removed
        self._emit(event)

    def save(self, best: bool = False) -> None:
        """Checkpoint: best weights first (when improved), then last weights with the trainer state.

        The checkpoint event goes to metrics.jsonl (fsynced) before the files, and the state
        records the file's length after it: a resume rewinds the metrics to exactly there."""
        meta = {"step": self.step, "val_loss": self.last_val_loss}
        which = [LAST, BEST] if best else [LAST]
        event: dict[str, Any] = {"event": "checkpoint", "step": self.step, "which": which}
        gathered = self._gather_for_checkpoint()  # every process takes part; only rank 0 writes
        if self.world.distributed:
            digests = distributed.gather(self.world, weights_digest(self.model))
            if len(set(digests)) > 1:  # DDP keeps replicas equal; a checkpoint must not hide it if not
                raise CharlmError(
                    f"the processes' weights differ at step {self.step} (digests {', '.join(digests)}); this is a "
                    f"bug in charlm or torch, please report it; the checkpoint from step {self.last_checkpoint_step} is intact"
                )
            event["weights_digests"] = digests
        if not self.world.is_main:
            self.last_checkpoint_step = self.step
            self._last_save_clock = time.monotonic()
            self._checkpoint_owed = False
            return
        try:
            self.metrics_size = self._emit(event, durable=True)
            if best:
                self.run_dir.save_checkpoint(BEST, self.model, meta)
            self.run_dir.save_checkpoint(LAST, self.model, meta, self.trainer_state(gathered))
        except OSError as exc:
            if self.last_checkpoint_step is not None:
                then = (
                    f"the checkpoint from step {self.last_checkpoint_step} is intact; free some disk space, "
                    f"then continue with: {self._resume_command()}"
                )
            else:
                then = "free some disk space, then start the run again with --overwrite"
            raise CharlmError(
                f"cannot write the checkpoint at step {self.step} in {self.run_dir.path} ({exc.strerror or exc}); {then}"
            ) from None
        self.last_checkpoint_step = self.step
        self._last_save_clock = time.monotonic()
        self._checkpoint_owed = False

    # ----- helpers --------------------------------------------------------------------
    def _resume_command(self) -> str:
        return f"charlm train --out {self.run_dir.path} --resume"

    def _emit(self, event: dict[str, Any], durable: bool = False) -> int:
        """Log an event to metrics.jsonl and the listener; returns the metrics file's size.
        Only rank 0 logs."""
        if not self.world.is_main:
            return self.metrics_size
        try:
            size = self.run_dir.append_metrics(event, durable=durable)
        except OSError as exc:
            raise CharlmError(
                f"cannot write {self.run_dir.path / METRICS_FILE} ({exc.strerror or exc}); "
                f"free some disk space, then continue with: {self._resume_command()}"
            ) from None
        self.on_event(event)
        return size

    def epoch_progress(self) -> float:
        return self.epoch + self.window / max(self.batcher.windows(self.epoch), 1)

    def progress(self) -> float:
        fractions = [0.0]
        if self.max_steps:
            fractions.append(self.step / self.max_steps)
        if self.max_time:
            fractions.append(self.elapsed / self.max_time)
        if self.max_epochs:
            fractions.append(self.epoch_progress() / self.max_epochs)
        return min(max(fractions), 1.0)

    def stop_reason(self) -> Optional[str]:
        if self.max_steps is not None and self.step >= self.max_steps:
            return "max_steps"
        if self.max_time is not None and self.elapsed >= self.max_time:
            return "max_time"
        if self.max_epochs is not None and self.epoch_progress() >= self.max_epochs - 1e-9:
            return "epochs"
        if self._interrupted:
            return "interrupted"
        return None

    def _agree_on_clock(self) -> None:
        """Take this step's host-side facts: an interrupt, the elapsed time, the time since
        the last checkpoint. Under torchrun every process takes rank 0's clock and stops if
        any process was interrupted, so all of them decide alike."""
        interrupted = float(self.should_stop())
        since_save = time.monotonic() - self._last_save_clock
        if not self.world.distributed:
            self._interrupted, self._since_save = bool(interrupted), since_save
            return
        main = self.world.is_main
        stop, elapsed, since_save = distributed.agree(
            self.world, [interrupted, self.elapsed if main else 0.0, since_save if main else 0.0]
        )
        self._interrupted, self.elapsed, self._since_save = stop > 0, elapsed, since_save

    def validate(self) -> Optional[float]:
        """Score the validation split (evaluate.py's method, in fp32); returns the loss."""
        if len(self.val_tokens) == 0:
            return None
        score = score_tokens(self.model, self.val_tokens, self.context_id, self.config.eval_batch_size,
                             DEFAULT_WINDOW, self.device, "fp32", part=(self.world.rank, self.world.size))
        if self.world.distributed:  # each process scored a share of the lanes
            score.nll, tokens = distributed.agree(self.world, [score.nll, float(score.tokens)])
            score.tokens = int(tokens)
        score.chars, score.bytes = self.corpus.chars["val"], self.corpus.bytes["val"]
        score.words, score.unknown = self.corpus.words["val"], self.corpus.unknown["val"]
        improved = self.best_val_loss is None or score.loss < self.best_val_loss
        self.last_val_loss = score.loss
        if improved:
            self.best_val_loss = score.loss
        self._emit(
            {
                "event": "eval",
                "split": "val",
                "step": self.step,
                "elapsed": round(self.elapsed, 3),
                "loss": score.loss,
                "bpc": score.bits_per_char,
                "bpb": score.bits_per_byte,
                "perplexity": score.perplexity,
                "word_perplexity": score.word_perplexity,
                "tokens": score.tokens,
                "best": improved,
            }
        )
        return score.loss

    def _evaluate_and_checkpoint(self) -> None:
        previous_best = self.best_val_loss
        loss = self.validate()
        improved = loss is not None and (previous_best is None or loss < previous_best)
        # without a validation split, "best" simply follows the latest weights
        self.save(best=improved or loss is None)

    def _checkpoint_due(self) -> bool:
        steps, seconds = self.config.checkpoint_every, self.config.checkpoint_seconds
        return (steps is not None and self.step % steps == 0) or (seconds is not None and self._since_save >= seconds)

    # ----- one step -------------------------------------------------------------------
    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward, clip, judge, and the update unless the guard finds the step bad.

        Nothing here waits for the device: the guard's record of the step joins
        self._pending, to be read back by _read_back."""
        number = self.step + 1
        self.faults.before_forward(number, self.model)
        with autocast(self.device, self.precision):
            logits, state = self.forward_model(x, self.state)  # (b, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss = self.faults.on_loss(number, loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # under DDP, gradients are averaged over processes here
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        judged = loss.detach().float()
        if self.world.distributed:  # every process judges the mean loss of the global batch
            judged = distributed.sum_(self.world, judged.clone()) / self.world.size
        bad, record = self.guard.judge(judged, grad_norm)
        skip = bad if self.guard.check_gradient else bad | ~torch.isfinite(grad_norm)
        self._updating = True
        if self._fused:
            # fused AdamW leaves weights, moments and step count alone where found_inf is
            # nonzero: the same device-side skip GradScaler relies on
            self.optimizer.found_inf = skip.float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not bool(skip):  # no fused kernel for this device: the skip costs a host sync
            self.optimizer.step()
        self.scaler.update()
        self._updating = False
        # a state that produced a bad step is not carried on (zeros, as at an epoch start)
        self.state = _zero_where(bad, detach_state(state))  # a scalar-select per tensor, no sync
        self._pending.append(record)

    def _read_back(self) -> bool:
        """Read the records of the steps run since the last call; count, log and react to
        bad steps in order. True when the run was rolled back."""
        records = self.guard.read(self._pending)
        self._pending = []
        first = self.step - len(records) + 1
        for number, record in enumerate(records, start=first):
            self._last_grad_norm = record.grad_norm
            self._streak = record.streak
            if not record.bad:
                self._log["loss_sum"] += record.loss
                self._log["good"] += 1
                if number > self._recovering_until:
                    self._rollbacks_in_a_row = 0
                continue
            self._log["skipped"] += 1
            self.skipped_steps += 1
            if self._on_bad_step(number, record):
                return True
        return False

    # ----- divergence -----------------------------------------------------------------
    def _give_up(self, why: str, step: int) -> CharlmError:
        lr = self.config.lr * self.lr_scale
        if self.last_checkpoint_step is not None:
            intact = f"the checkpoint from step {self.last_checkpoint_step} is intact: continue it with a lower --lr, e.g. "
            intact += f"{self._resume_command()} --lr {lr / 2:.3g}"
        else:
            intact = "start again with a lower --lr"
        return CharlmError(f"training diverged at step {step}: {why}; {intact} (or try --precision fp32)")

    def _on_bad_step(self, number: int, record: StepRecord) -> bool:
        """Skip, roll back or give up after bad step `number`; True if the run was rolled back."""
        reason = self.guard.describe(record)
        action = self.config.on_divergence
        if action == "skip" and record.streak >= self.config.skip_limit:
            action = "rollback"
        self._emit({"event": "bad_step", "step": number, "reason": reason, "loss": _finite_or_text(record.loss),
                    "grad_norm": _finite_or_text(record.grad_norm), "streak": record.streak, "action": action})
        if action == "skip":
            return False
        if action == "stop":
            raise self._give_up(f"{reason} (--on-divergence stop)", number)
        if self._rollbacks_in_a_row >= self.config.max_rollbacks:
            raise self._give_up(
                f"{reason}, {record.streak} bad step(s) in a row after "
                f"{self._rollbacks_in_a_row} rollback(s) (--max-rollbacks {self.config.max_rollbacks})", number
            )
        failed_at, scale, skipped = number, self.lr_scale, self.skipped_steps
        self._restore_last_checkpoint(keep_elapsed=True)  # the time budget keeps running
        self.lr_scale = min(scale, self.lr_scale) * self.config.rollback_lr_factor
        self.skipped_steps = skipped  # the skips that led here still count, though their steps are redone
        self._rollbacks_in_a_row += 1
        self.rollbacks += 1
        self._recovering_until = max(self._recovering_until, failed_at)
        self._checkpoint_owed = False  # back at a checkpoint
        self._emit({"event": "rollback", "step": failed_at, "to_step": self.step, "lr_scale": self.lr_scale,
                    "lr": learning_rate(self.config, self.step, self.progress()) * self.lr_scale,
                    "in_a_row": self._rollbacks_in_a_row})
        return True

    def _out_of_memory(self, exc: BaseException) -> CharlmError:
        """Save what is consistent and explain; the caller raises the result."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        saved = False
        if self._pending and not self.world.distributed and not self._updating:
            self._read_back()  # the steps completed before this one count, whatever they were
        # weights and optimizer untouched by the failed step; under torchrun the other
        # processes are waiting in a collective of this step, so nothing can be gathered
        if not self._updating and not self.world.distributed:
            try:
                self.save()
                saved = True
            except (CharlmError, OSError, RuntimeError):
                pass
        where = (
            f"the run is saved at step {self.step}"
            if saved
            else f"the checkpoint from step {self.last_checkpoint_step} is intact"
            if self.last_checkpoint_step is not None
            else "no checkpoint was written"
        )
        return CharlmError(
            f"out of memory at step {self.step + 1} ({first_line(exc)}); {where}. Free memory and continue with: "
            f"{self._resume_command()}, or start a new run with a smaller --batch-size or --hidden"
        )

    # ----- the loop -------------------------------------------------------------------
    def run(self) -> TrainResult:
        config = self.config
        B, T = config.batch_size, config.seq_len
        self.model.train()
        self._emit(
            {
                "event": "start",
                "step": self.step,
                "parameters": self.model.num_parameters(),
                "device": str(self.device),
                "precision": self.precision,
                "threads": torch.get_num_threads(),
                "processes": self.world.size,
                "compile": config.compile,
                "train_tokens": int(len(self.corpus.splits["train"])),
                "val_tokens": int(len(self.val_tokens)),
                "tokens_per_epoch": self.batcher.tokens_per_epoch,
                "max_steps": self.max_steps,
                "max_time": self.max_time,
                "epochs": self.max_epochs,
            }
        )
        if self.last_checkpoint_step is None:
            fresh = distributed.broadcast(self.world, not self.run_dir.has_checkpoint() if self.world.is_main else None)
            if fresh:
                self.save()  # something to roll back to, and to resume after an early crash
        step_time, timed_steps = 0.0, 0  # since the last train event, in this session
        clock = time.perf_counter()
        last_was_eval = False

        def tick() -> float:
            nonlocal clock
            now = time.perf_counter()
            spent, clock = now - clock, now
            self.elapsed += spent
            return spent

        reason = None
        while True:
            self._agree_on_clock()
            reason = self.stop_reason()
            if reason:
                if self._pending and self._read_back():
                    step_time, timed_steps = 0.0, 0
                    tick()
                    continue  # rolled back: the steps since the checkpoint are to be done again
                break
            if self.window >= self.batcher.windows(self.epoch):
                self.epoch += 1
                self.window = 0
                self.state = None  # the lanes start over
            x, y = self.batcher.batch(self.epoch, self.window)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            lr = learning_rate(config, self.step, self.progress()) * self.lr_scale
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            try:
                self._train_step(x, y)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise self._out_of_memory(exc) from None
                raise
            self.step += 1
            self.window += 1
            self.tokens_seen += B * T
            step_time += tick()
            timed_steps += 1
            last_was_eval = False

            log_due = self.step % config.log_every == 0
            eval_due = self.step % config.eval_every == 0
            save_due = self._checkpoint_owed or self._checkpoint_due()
            if not (log_due or eval_due or save_due or len(self._pending) >= self.check_every):
                continue
            if self._read_back():
                step_time, timed_steps = 0.0, 0
                tick()
                continue  # rolled back: the position and the log are the checkpoint's

            if log_due:
                good, skipped = self._log["good"], self._log["skipped"]
                event = {
                    "event": "train",
                    "step": self.step,
                    "epoch": round(self.epoch_progress(), 4),
                    "loss": self._log["loss_sum"] / good if good else None,
                    "lr": lr,
                    "grad_norm": _finite_or_text(self._last_grad_norm),
                    # steps timed in this session only: a resumed run's first interval began before it
                    "tokens_per_s": round(timed_steps * B * T / max(step_time, 1e-9), 1),
                    "elapsed": round(self.elapsed, 3),
                    "progress": round(self.progress(), 5),
                }
                if skipped:
                    event["skipped"] = skipped
                self._emit(event)
                self._log = {"loss_sum": 0.0, "good": 0, "skipped": 0}
                step_time, timed_steps = 0.0, 0
            try:
                if self._streak:
                    # weights that just failed are not checkpointed; the next good step makes up for it
                    self._checkpoint_owed |= eval_due or save_due
                elif eval_due:
                    self._evaluate_and_checkpoint()
                    last_was_eval = True
                    tick()
                elif save_due:
                    self.save()
                    tick()
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise self._out_of_memory(exc) from None
                raise

        if reason == "interrupted":
            self.save()
        elif not last_was_eval:
            self._evaluate_and_checkpoint()
        tick()
        self._emit(
            {
                "event": "end",
                "step": self.step,
                "reason": reason,
                "elapsed": round(self.elapsed, 3),
                "best_val_loss": self.best_val_loss,
                "last_val_loss": self.last_val_loss,
                "skipped_steps": self.skipped_steps,
                "rollbacks": self.rollbacks,
            }
        )
        return TrainResult(self.step, reason, self.elapsed, self.best_val_loss, self.last_val_loss)


def _zero_where(condition: torch.Tensor, state):
    """The state with every value replaced by zero where `condition` (a scalar bool tensor) holds."""
    if isinstance(state, tuple):
        return tuple(torch.where(condition, 0.0, s) for s in state)
    return torch.where(condition, 0.0, state)


def _finite_or_text(value: float):
    """JSON has no NaN or infinity: write those as text."""
    return value if math.isfinite(value) else str(value)
