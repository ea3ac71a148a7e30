"""One training step: forward, backward, clip, judge, update. Nothing here waits for the device.

`StepRunner` owns what a step changes: the optimizer (AdamW, optim.py), fp16's GradScaler,
the divergence guard (guard.py) and the model the step calls (the task's model, maybe in
DistributedDataParallel, maybe compiled). `run` takes the task's loss of a batch under the
fault plan (faults.py), backpropagates (under DDP the gradients are averaged there), clips
the gradient norm, has the guard judge the step on the device, and applies the update
unless the step is bad: fused AdamW skips on the guard's verdict as a device tensor
(`found_inf`), so a GPU never waits for the host. It returns the guard's record of the step,
which recovery.py reads back later; `updating` says whether an update was under way when a
step failed (out of memory), so the engine knows whether the weights are consistent.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from charlm.config import TrainConfig
from charlm.training import distributed
from charlm.training.distributed import World
from charlm.training.faults import FaultPlan
from charlm.training.guard import DivergenceGuard
from charlm.training.optim import build_optimizer
from charlm.training.state import TrainerState, damaged
from charlm.training.task import Task


class StepRunner:
    def __init__(self, model: torch.nn.Module, task: Task, config: TrainConfig, device: torch.device,
                 precision: str, world: World, faults: FaultPlan):  # fmt: skip
        self.model, self.task, self.faults = model, task, faults
        self.config, self.device, self.world = config, device, world
        self.optimizer = build_optimizer(model, config, getattr(task, "parameter_group", None))
        self._fused = bool(self.optimizer.defaults.get("fused"))
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        self.forward_model: torch.nn.Module = model  # what the step calls: maybe DDP, maybe compiled
        if world.distributed:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)
        # fp16's GradScaler handles non-finite gradients itself (it skips the step, lowers the scale)
        self.guard = DivergenceGuard(config.spike_factor, check_gradient=(precision != "fp16"), device=device)
        self.updating = False  # between the start of an update and its end

    def set_lr(self, lr: float, factors: Optional[dict[str, float]] = None) -> None:
        """Every group's rate: lr, times the task's factor for the group's name if any."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * factors.get(group.get("name", ""), 1.0) if factors else lr

    def run(self, number: int, batch: Any) -> torch.Tensor:
        """Step `number` (1-based) on `batch`; returns the guard's record of it (on the device)."""
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
        self.updating = True
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
        self.updating = False
        self.task.end_step(bad)
        return record

    def free_memory(self) -> None:
        """After running out of memory: drop the gradients and the allocator's cache."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Let go of the DDP wrapper: gloo aborts a process that still holds one while its
        process group is taken down."""
        self.forward_model = self.model

    # ----- in the trainer state ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "guard": self.guard.state_dict()}  # fmt: skip

    def load(self, weights: dict[str, torch.Tensor], state: TrainerState, where: str) -> None:
        """The weights, optimizer, scaler and guard of a checkpoint (`where` names it)."""
        self.model.load_state_dict(weights)
        if self.device.type == "cuda":
            for module in self.model.modules():
                if isinstance(module, torch.nn.RNNBase):
                    module.flatten_parameters()  # keep cuDNN's single weight buffer
        try:
            self.optimizer.load_state_dict(state.optimizer)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise damaged(where, exc) from None
        if state.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.scaler)
        self.guard.load_state_dict(state.guard)
