"""The training loop: stateful truncated BPTT with AdamW, warmup + cosine, clipping, autocast.

One step takes the next (B, T) window of every lane (batching.py), runs the model from the
state the previous window left, backpropagates through those T steps only, clips the
gradient norm, steps the optimizer, and detaches the state for the next window. The state
is reset to zero at each epoch start, where the lanes start over.

Learning rate, as a function of the step and of `progress` in [0, 1] (the largest fraction
used of any stop budget: steps, seconds, epochs):

    lr = (min_lr + (peak - min_lr) * (1 + cos(pi * progress)) / 2) * min(1, (step + 1) / warmup)

so a run limited by time decays to min_lr exactly when its time is up.

The trainer never prints. It reports every event as a dict to `on_event` and appends it to
the run's metrics.jsonl; it asks `should_stop()` once per step (the CLI sets that on Ctrl-C).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .batching import LaneBatcher
from .checkpoint import BEST, LAST, RunDirectory
from .config import ModelConfig, TrainConfig
from .corpus import PreparedCorpus
from .errors import CharlmError
from .evaluate import DEFAULT_WINDOW, score_tokens
from .hardware import autocast
from .model import RNNLM, detach_state, state_from_tensors, state_tensors
from .tokenizer import context_token_id

STATE_FORMAT = 1


@dataclass
class TrainResult:
    step: int
    reason: str  # max_steps, max_time, epochs, interrupted
    elapsed: float
    best_val_loss: Optional[float]
    last_val_loss: Optional[float]


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    floor = config.lr * config.min_lr_ratio
    cosine = floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return cosine * warmup


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        # Matrices decay; biases and the embedding table (a lookup, not a map) do not.
        (decay if param.dim() >= 2 and not name.startswith("embedding") else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError):  # older torch has no fused kernel for this device
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


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
    ):
        self.config = config
        self.corpus = corpus
        self.run_dir = run_dir
        self.device = device
        self.precision = precision
        self.on_event = on_event or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)

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

        # position and history; all of it goes into the trainer state
        self.step = 0
        self.epoch = 0
        self.window = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.state = None  # carried recurrent state

    # ----- persistence ----------------------------------------------------------------
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
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "carried_state": [t.cpu() for t in state_tensors(self.state)] if self.state is not None else None,
        }

    def load_trainer_state(self, saved: dict[str, Any]) -> None:
        if saved.get("format") != STATE_FORMAT:
            raise CharlmError("the trainer state was written by a different charlm; it cannot be resumed")
        self.step, self.epoch, self.window = int(saved["step"]), int(saved["epoch"]), int(saved["window"])
        self.tokens_seen, self.elapsed = int(saved["tokens_seen"]), float(saved["elapsed"])
        self.best_val_loss, self.last_val_loss = saved["best_val_loss"], saved["last_val_loss"]
        self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved.get("rng_cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        carried = saved.get("carried_state")
        self.state = (
            state_from_tensors([t.to(self.device) for t in carried], self.model.config.cell) if carried else None
        )

    def resume(self) -> None:
        """Continue from the run directory's last checkpoint: weights, optimizer, RNG, position."""
        saved = self.run_dir.load_trainer_state()
        model, _ = self.run_dir.load_model(LAST, device=self.device)
        self.model.load_state_dict(model.state_dict())
        self.load_trainer_state(saved)
        self._emit({"event": "resume", "step": self.step, "epoch": self.epoch, "window": self.window})

    def save(self, best: bool = False) -> None:
        meta = {"step": self.step, "val_loss": self.last_val_loss}
        self.run_dir.save_checkpoint(LAST, self.model, meta, self.trainer_state())
        written = [LAST]
        if best:
            self.run_dir.save_checkpoint(BEST, self.model, meta)
            written.append(BEST)
        self._emit({"event": "checkpoint", "step": self.step, "which": written})

    # ----- helpers --------------------------------------------------------------------
    def _emit(self, event: dict[str, Any]) -> None:
        self.run_dir.append_metrics(event)
        self.on_event(event)

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
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        step_time = 0.0
        grad_norm = torch.zeros(())
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
            lr = learning_rate(config, self.step, self.progress())
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            with autocast(self.device, self.precision):
                logits, state = self.model(x, self.state)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if config.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.state = detach_state(state)

            self.step += 1
            self.window += 1
            self.tokens_seen += B * T
            loss_sum += loss.detach()
            loss_count += 1
            step_time += tick()
            last_was_eval = False

            if self.step % config.log_every == 0:
                mean_loss = float(loss_sum) / loss_count
                if not math.isfinite(mean_loss):
                    raise CharlmError(
                        f"training diverged: the loss became {mean_loss} at step {self.step}; "
                        "lower --lr or use --precision fp32"
                    )
                self._emit(
                    {
                        "event": "train",
                        "step": self.step,
                        "epoch": round(self.epoch_progress(), 4),
                        "loss": mean_loss,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "tokens_per_s": round(loss_count * B * T / max(step_time, 1e-9), 1),
                        "elapsed": round(self.elapsed, 3),
                        "progress": round(self.progress(), 5),
                    }
                )
                loss_sum.zero_()
                loss_count, step_time = 0, 0.0
            if self.step % config.eval_every == 0:
                self._evaluate_and_checkpoint()
                last_was_eval = True
                tick()
            elif self.step % config.checkpoint_every == 0:
                self.save()
                tick()

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
            }
        )
        return TrainResult(self.step, reason, self.elapsed, self.best_val_loss, self.last_val_loss)
