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

from . import rngstate
from .batching import LaneBatcher
from .checkpoint import BEST, LAST, METRICS_FILE, STATE_FILE, RunDirectory
from .config import ModelConfig, TrainConfig
from .corpus import PreparedCorpus
from .errors import CharlmError, first_line
from .evaluate import DEFAULT_WINDOW, score_tokens
from .faults import FaultPlan, OutOfMemory
from .guard import DivergenceGuard
from .hardware import autocast
from .model import RNNLM, detach_state, state_from_tensors, state_tensors
from .optim import build_optimizer, learning_rate
from .tokenizer import context_token_id

STATE_FORMAT = 2
READABLE_STATE_FORMATS = (1, 2)


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
    ):
        self.config = config
        self.corpus = corpus
        self.run_dir = run_dir
        self.device = device
        self.precision = precision
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.faults = faults or FaultPlan()

        torch.manual_seed(config.seed)  # initial weights and dropout masks; resume() restores the RNG later
        self.model = RNNLM(model_config).to(device)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        self.batcher = LaneBatcher(
            corpus.splits["train"], config.batch_size, config.seq_len, seed=config.seed, random_offset=config.random_offset
        )
        self.val_tokens = corpus.splits["val"]
        self.context_id = context_token_id(corpus.tokenizer)
        self.max_steps, self.max_time, self.max_epochs = config.stop_limits()
        # fp16's GradScaler handles non-finite gradients itself (it skips the step, lowers the scale)
        self.guard = DivergenceGuard(config.spike_factor, check_gradient=(precision != "fp16"))
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

    # ----- persistence ----------------------------------------------------------------
    def data_fingerprint(self) -> str:
        if self._data_fingerprint is None:
            self._data_fingerprint = fingerprint(self.corpus.splits["train"])
        return self._data_fingerprint

    def trainer_state(self) -> dict[str, Any]:
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
            "rng": rngstate.capture(self.device),
            "carried_state": [t.cpu() for t in state_tensors(self.state)] if self.state is not None else None,
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
        if "rng" in saved:
            rngstate.restore(saved["rng"], self.device)
        else:  # format 1 kept torch's generators only
            rngstate.restore({"torch": saved["rng_cpu"], "cuda": saved.get("rng_cuda")}, self.device)
        carried = saved.get("carried_state")
        self.state = (
            state_from_tensors([t.to(self.device) for t in carried], self.model.config.cell) if carried else None
        )
        self.guard.load_state_dict(saved.get("guard", {}))
        self.lr_scale = float(saved.get("lr_scale", 1.0))
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.rollbacks = int(saved.get("rollbacks", 0))
        self._log = dict(saved.get("log") or {"loss_sum": 0.0, "good": 0, "skipped": 0})
        self.metrics_size = int(saved.get("metrics_size", 0))
        self.last_checkpoint_step = self.step

    def _restore_last_checkpoint(self, keep_elapsed: bool = False) -> dict[str, Any]:
        saved = self.run_dir.load_trainer_state()
        model, _ = self.run_dir.load_model(LAST, device=self.device)
        self.model.load_state_dict(model.state_dict())
        self.load_trainer_state(saved, keep_elapsed=keep_elapsed)
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
        removed = self.run_dir.remove_leftovers()
        saved = self._restore_last_checkpoint()
        self._check_same_data(saved)
        if changed and "lr" in changed:
            self.lr_scale = 1.0  # a new --lr replaces the rate that rollbacks lowered
        dropped = self.run_dir.rewind_metrics(self.metrics_size) if "metrics_size" in saved else 0
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
        try:
            self.metrics_size = self._emit({"event": "checkpoint", "step": self.step, "which": which}, durable=True)
            if best:
                self.run_dir.save_checkpoint(BEST, self.model, meta)
            self.run_dir.save_checkpoint(LAST, self.model, meta, self.trainer_state())
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
        """Log an event to metrics.jsonl and the listener; returns the metrics file's size."""
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
        if self.should_stop():
            return "interrupted"
        return None

    def validate(self) -> Optional[float]:
        """Score the validation split (evaluate.py's method, in fp32); returns the loss."""
        if len(self.val_tokens) == 0:
            return None
        score = score_tokens(self.model, self.val_tokens, self.context_id, self.config.eval_batch_size,
                             DEFAULT_WINDOW, self.device, "fp32")
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
        return (steps is not None and self.step % steps == 0) or (
            seconds is not None and time.monotonic() - self._last_save_clock >= seconds
        )

    # ----- one step -------------------------------------------------------------------
    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, Optional[str]]:
        """Forward, backward, clip, and the update unless the guard finds the step bad.

        Returns (loss, gradient norm, why the step was bad or None)."""
        number = self.step + 1
        self.faults.before_forward(number, self.model)
        with autocast(self.device, self.precision):
            logits, state = self.model(x, self.state)  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss = self.faults.on_loss(number, loss)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # the one host-device sync of a step: the guard needs both numbers before the update
        loss_value, norm_value = torch.stack([loss.detach().float(), grad_norm.detach().float()]).tolist()
        verdict = self.guard.judge(loss_value, norm_value)
        if verdict is None:
            self._updating = True
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self._updating = False
            self.state = detach_state(state)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            self.state = None  # a state that produced a bad step is not carried on
        return loss_value, norm_value, verdict

    # ----- divergence -----------------------------------------------------------------
    def _give_up(self, why: str) -> CharlmError:
        lr = self.config.lr * self.lr_scale
        if self.last_checkpoint_step is not None:
            intact = f"the checkpoint from step {self.last_checkpoint_step} is intact: continue it with a lower --lr, e.g. "
            intact += f"{self._resume_command()} --lr {lr / 2:.3g}"
        else:
            intact = "start again with a lower --lr"
        return CharlmError(f"training diverged at step {self.step}: {why}; {intact} (or try --precision fp32)")

    def _on_bad_step(self, reason: str, loss: float, grad_norm: float) -> bool:
        """Skip, roll back or give up after a bad step; True if the run was rolled back."""
        action = self.config.on_divergence
        if action == "skip" and self.guard.bad_streak >= self.config.skip_limit:
            action = "rollback"
        self._emit({"event": "bad_step", "step": self.step, "reason": reason, "loss": _finite_or_text(loss),
                    "grad_norm": _finite_or_text(grad_norm), "streak": self.guard.bad_streak, "action": action})
        if action == "skip":
            return False
        if action == "stop":
            raise self._give_up(f"{reason} (--on-divergence stop)")
        if self._rollbacks_in_a_row >= self.config.max_rollbacks:
            raise self._give_up(
                f"{reason}, {self.guard.bad_streak} bad step(s) in a row after "
                f"{self._rollbacks_in_a_row} rollback(s) (--max-rollbacks {self.config.max_rollbacks})"
            )
        failed_at, scale, skipped = self.step, self.lr_scale, self.skipped_steps
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
        if not self._updating:  # weights and optimizer untouched by the failed step
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
                "train_tokens": int(len(self.corpus.splits["train"])),
                "val_tokens": int(len(self.val_tokens)),
                "tokens_per_epoch": self.batcher.tokens_per_epoch,
                "max_steps": self.max_steps,
                "max_time": self.max_time,
                "epochs": self.max_epochs,
            }
        )
        if self.last_checkpoint_step is None and not self.run_dir.has_checkpoint():
            self.save()  # a fresh run: something to roll back to, and to resume after an early crash
        step_time = 0.0
        grad_norm = 0.0
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
            reason = self.stop_reason()
            if reason:
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
                loss, grad_norm, bad = self._train_step(x, y)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise self._out_of_memory(exc) from None
                raise
            self.step += 1
            self.window += 1
            self.tokens_seen += B * T
            step_time += tick()
            last_was_eval = False
            if bad is None:
                self._log["loss_sum"] += loss
                self._log["good"] += 1
                if self.step > self._recovering_until:
                    self._rollbacks_in_a_row = 0
            else:
                self._log["skipped"] += 1
                self.skipped_steps += 1
                if self._on_bad_step(bad, loss, grad_norm):
                    step_time = 0.0
                    tick()
                    continue  # rolled back: the position and the log are the checkpoint's

            if self.step % config.log_every == 0:
                good, skipped = self._log["good"], self._log["skipped"]
                event = {
                    "event": "train",
                    "step": self.step,
                    "epoch": round(self.epoch_progress(), 4),
                    "loss": self._log["loss_sum"] / good if good else None,
                    "lr": lr,
                    "grad_norm": _finite_or_text(grad_norm),
                    "tokens_per_s": round((good + skipped) * B * T / max(step_time, 1e-9), 1),
                    "elapsed": round(self.elapsed, 3),
                    "progress": round(self.progress(), 5),
                }
                if skipped:
                    event["skipped"] = skipped
                self._emit(event)
                self._log = {"loss_sum": 0.0, "good": 0, "skipped": 0}
                step_time = 0.0
            try:
                if self.guard.bad_streak:
                    # weights that just failed are not checkpointed; the next good step makes up for it
                    self._checkpoint_owed |= self.step % config.eval_every == 0 or self._checkpoint_due()
                elif self.step % config.eval_every == 0:
                    self._evaluate_and_checkpoint()
                    last_was_eval = True
                    tick()
                elif self._checkpoint_owed or self._checkpoint_due():
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


def _finite_or_text(value: float):
    """JSON has no NaN or infinity: write those as text."""
    return value if math.isfinite(value) else str(value)
