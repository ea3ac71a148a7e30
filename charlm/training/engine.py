"""The training engine: one loop for every task (task.py says what a task supplies).

Each step takes the task's next batch, runs its loss under autocast, backpropagates,
clips the gradient norm, and steps AdamW (optim.py) at the learning rate of the warmup +
cosine schedule over the run's budget (steps, seconds or epochs, whichever runs out first).

Every step is judged by the divergence guard (guard.py) before its update: a NaN/inf loss
or gradient, or a loss spike, skips the update; what follows is guard.react's decision:
go on, roll back to the last checkpoint with the learning rate scaled by
`rollback_lr_factor`, or give up with the last checkpoint intact. Running out of memory
saves the run when the weights are consistent and ends with a message that says how to
continue.

The guard judges on the device, and fused AdamW skips a bad update on the device's verdict,
so a step never waits for the GPU. The host reads the steps' records back every
`check_every` steps (and before any log line, evaluation or checkpoint) and reacts then:
on the CPU that is every step, on a GPU every `log_every` steps.

Under torchrun (distributed.py) every process runs this loop on its share of the batch,
with the model in DistributedDataParallel: the guard judges the mean loss over all
processes, host decisions (stop, elapsed time, checkpoint due) are agreed every step, and
only rank 0 writes the run directory (checkpoint.py).

Checkpoints (every `checkpoint_every` steps or `checkpoint_seconds`, at each evaluation,
on interrupt, and at step 0 of a fresh run) hold one TrainerState (state.py): position,
optimizer, every RNG, guard and log accumulators, metrics.jsonl's length, and the task's
own state. The engine never prints: it reports every event to `on_event` and metrics.jsonl,
and asks `should_stop()` once per step (the CLI sets that on Ctrl-C).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from charlm.config import TrainConfig
from charlm.runs.directory import RunDirectory
from charlm.training import distributed
from charlm.training.checkpoint import Checkpointer, EventLog
from charlm.training.distributed import SINGLE, World
from charlm.training.faults import FaultPlan
from charlm.training.guard import DivergenceGuard
from charlm.training.optim import build_optimizer
from charlm.training.recovery import Recovery
from charlm.training.state import TrainerState, damaged, empty_log
from charlm.training.task import Task


class Engine(Recovery):
    """Trains `task` under `config` into `run_dir`; see the module docstring.

    config is a TrainConfig; the engine reads its seed, lr, min_lr_ratio, warmup_steps,
    weight_decay, grad_clip, spike_factor, on_divergence, skip_limit, max_rollbacks,
    rollback_lr_factor, log_every, eval_every, checkpoint_every, checkpoint_seconds,
    compile and stop limits (max_steps, max_time, epochs); the rest is the task's."""

    def __init__(
        self,
        task: Task,
        config: TrainConfig,
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
        super().__init__(config, should_stop, world)
        self.task = task
        self.run_dir = run_dir
        self.device = device
        self.precision = precision
        self.faults = faults or FaultPlan()
        if check_every is None:
            check_every = 1 if device.type == "cpu" and not world.distributed else config.log_every
        self.check_every = max(1, check_every)
        self.events = EventLog(run_dir, world, on_event or (lambda event: None))
        self.checkpoints = Checkpointer(run_dir, world, device, self.events)

        # initial weights: the same on every process (DDP checks it); dropout masks differ by rank
        torch.manual_seed(config.seed)
        self.model = task.build_model(device)
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
        # fp16's GradScaler handles non-finite gradients itself (it skips the step, lowers the scale)
        self.guard = DivergenceGuard(config.spike_factor, check_gradient=(precision != "fp16"), device=device)

        # kept in the trainer state beyond the loop's position
        self.best_val_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.lr_scale = 1.0  # lowered by each rollback
        self.skipped_steps = 0
        self.rollbacks = 0
        self.metrics_size = 0  # metrics.jsonl's length at the last checkpoint
        self._log = empty_log()  # since the last train event

        # this session only
        self.last_checkpoint_step: Optional[int] = None
        self._rollbacks_in_a_row = 0
        self._recovering_until = 0
        self._updating = False
        self._pending: list[torch.Tensor] = []  # guard records of steps not yet read back
        self._streak = 0  # bad steps in a row, as of the last read-back
        self._last_grad_norm = 0.0

    def close(self) -> None:
        """Let go of the DDP wrapper: gloo aborts a process that still holds one while its
        process group is taken down."""
        self.forward_model = self.model

    # ----- the trainer state ------------------------------------------------------------
    def capture(self, task_state: dict[str, Any], rngs: list[dict[str, Any]], metrics_size: int) -> TrainerState:
        """The checkpoint's TrainerState, from the task's state and every process's RNGs."""
        self.metrics_size = metrics_size
        return TrainerState(
            step=self.step, epoch=self.epoch, window=self.window, tokens_seen=self.tokens_seen,
            elapsed=self.elapsed, best_val_loss=self.best_val_loss, last_val_loss=self.last_val_loss,
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=rngs[0], rng_ranks=rngs if len(rngs) > 1 else None, world_size=self.world.size,
            guard=self.guard.state_dict(), lr_scale=self.lr_scale, skipped_steps=self.skipped_steps,
            rollbacks=self.rollbacks, log=dict(self._log), metrics_size=metrics_size, task=task_state,
        )  # fmt: skip

    def trainer_state(self) -> dict[str, Any]:
        """The trainer state as a checkpoint would save it now (under torchrun, every process
        must call this together)."""
        return self.capture(
            self.task.state_dict(self.epoch), self.checkpoints.gather_rngs(), self.metrics_size
        ).to_dict()

    def load_state(self, saved: dict[str, Any], keep_elapsed: bool = False) -> TrainerState:
        """Continue from a saved trainer state (any readable format); the weights are the caller's."""
        where = self.checkpoints.where
        state = TrainerState.from_dict(saved, where)
        self.step, self.epoch, self.window, self.tokens_seen = state.step, state.epoch, state.window, state.tokens_seen
        if not keep_elapsed:
            self.elapsed = state.elapsed
        self.best_val_loss, self.last_val_loss = state.best_val_loss, state.last_val_loss
        try:
            self.optimizer.load_state_dict(state.optimizer)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise damaged(where, exc) from None
        if state.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.scaler)
        self.checkpoints.restore_rngs(state, self.config.seed)
        self.task.load_state_dict(state.task, where)
        self.guard.load_state_dict(state.guard)
        self.lr_scale, self.skipped_steps, self.rollbacks = state.lr_scale, state.skipped_steps, state.rollbacks
        self._log = dict(state.log)
        self.metrics_size = state.metrics_size or 0
        self.last_checkpoint_step = self.step
        return state

    def _restore_last_checkpoint(self, keep_elapsed: bool = False) -> TrainerState:
        weights, saved = self.checkpoints.read_last()
        self.model.load_state_dict(weights)
        if self.device.type == "cuda":
            for module in self.model.modules():
                if isinstance(module, torch.nn.RNNBase):
                    module.flatten_parameters()  # keep cuDNN's single weight buffer
        state = self.load_state(saved, keep_elapsed=keep_elapsed)
        self._pending = []
        self._streak = self.guard.bad_streak
        return state

    def resume(self, changed: Optional[dict[str, Any]] = None) -> None:
        """Continue from the run directory's last checkpoint: weights, optimizer, RNG, position.

        Temporary files a killed process left are removed, and metrics.jsonl is rewound to
        the checkpoint, so the resumed run logs each step exactly once. `changed` (option:
        [old, new]) is recorded in the resume event."""
        removed = self.run_dir.remove_leftovers() if self.world.is_main else []
        state = self._restore_last_checkpoint()
        self.task.check_resume(state.task, self.step)
        if changed and "lr" in changed:
            self.lr_scale = 1.0  # a new --lr replaces the rate that rollbacks lowered
        rewind = state.metrics_size is not None and self.world.is_main
        dropped = self.run_dir.rewind_metrics(state.metrics_size) if rewind else 0
        event = {"event": "resume", "step": self.step, "epoch": self.epoch, "window": self.window}
        if changed:
            event["changed"] = changed
        if dropped:
            event["discarded_events"] = dropped
        if removed:
            event["removed_leftovers"] = removed
        self.emit(event)

    def save(self, best: bool = False) -> None:
        """Checkpoint: best weights first (when improved), then last weights with the trainer
        state. Every process takes part; only rank 0 writes."""
        task_state = self.task.state_dict(self.epoch)
        rngs = self.checkpoints.gather_rngs()
        self.checkpoints.save(self.model, self.step, self.last_val_loss, best,
                              lambda size: self.capture(task_state, rngs, size), self.last_checkpoint_step)  # fmt: skip
        self.last_checkpoint_step = self.step
        self.saved_now()

    def emit(self, event: dict[str, Any]) -> None:
        self.events.emit(event)

    # ----- one step -------------------------------------------------------------------
    def _train_step(self, batch: Any) -> None:
        """Forward, backward, clip, judge, and the update unless the guard finds the step bad.

        Nothing here waits for the device: the guard's record of the step joins
        self._pending, to be read back by _read_back."""
        number = self.step + 1
        self.faults.before_forward(number, self.model)
        loss = self.faults.on_loss(number, self.task.loss(self.forward_model, batch))
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
        self.task.end_step(bad)
        self._pending.append(record)

    # ----- validation -------------------------------------------------------------------
    def validate(self) -> Optional[float]:
        """The task's validation, logged as an eval event; returns its loss."""
        figures = self.task.validate(self.model)
        if figures is None:
            return None
        loss = figures["loss"]
        improved = self.best_val_loss is None or loss < self.best_val_loss
        self.last_val_loss = loss
        if improved:
            self.best_val_loss = loss
        self.emit({"event": "eval", "split": "val", "step": self.step, "elapsed": round(self.elapsed, 3),
                   **figures, "best": improved})  # fmt: skip
        return loss

    def evaluate_and_checkpoint(self) -> None:
        previous_best = self.best_val_loss
        loss = self.validate()
        improved = loss is not None and (previous_best is None or loss < previous_best)
        # without a validation split, "best" simply follows the latest weights
        self.save(best=improved or loss is None)
