"""The task interface: what the training engine needs from whatever it trains.

The engine (engine.py) owns everything that is the same for every task: the loop and its
stop limits, the optimizer and schedule, the divergence guard, checkpoints and resume,
out-of-memory handling, torchrun agreement and the events. A task owns what is particular:
its model, its batches, the loss of a batch, its validation, and any state of its own that
a checkpoint must keep. The engine calls, in this order:

    build_model(device)            once, right after seeding torch with the run's seed
    describe()                     for the start event
    batches(epoch)                 how many steps epoch `epoch` has (asked every step)
    start_epoch(epoch)             when the loop enters a new epoch
    batch(epoch, index)            the index-th batch of the epoch, on the device
    batch_tokens(batch)            tokens the step trains on, over all processes
    loss(model, batch)             forward pass and mean loss; `model` may be a DDP or
                                   compiled wrapper of build_model's model
    end_step(bad)                  after the update (or its skip): bad is the guard's verdict
    validate(model, complete)      at each evaluation, on every process; complete=False
                                   during training (a task may score a sample), True
                                   for the closing one
    state_dict(epoch)              at each checkpoint, on every process (may be collective)
    load_state_dict(saved, where)  at resume and rollback, after the weights are loaded
    check_resume(saved, step)      at resume only: refuse when the data changed

Three methods are optional; the engine asks for them when a task has them:

    parameter_group(name)          a parameter's learning-rate group (building the optimizer)
    lr_factors(epoch_progress)     each group's factor on the schedule's rate (every step)
    stop_reason()                  a reason of the task's own to stop now, or None

Batches are addressed by (epoch, index) alone, so a resumed run gets the same batches from
its position: a task that shuffles seeds its shuffle from (seed, epoch).

The language-model task (charlm.tasks.language_model) carries the recurrent state of its
TBPTT lanes from one batch to the next: `loss` runs from the carried state, `end_step`
keeps the new one (zeroed after a bad step), `start_epoch` resets it, and `state_dict`
gathers it from every process. The classification task (charlm.tasks.classification)
carries nothing: `batch` gives padded, labelled texts bucketed by length, `loss` is the
cross entropy of the (B, C) logits, `validate` gives accuracy and macro-F1 with the error
of the chosen one as "selection_loss", and it uses all three optional methods (transferred
layers frozen, then at a lower rate; early stopping).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch


class Task(Protocol):
    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The model, on `device`. Its initial weights are drawn here and nowhere else, so
        every process of a torchrun job builds the same ones."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts about the data for the start event (sizes, tokens per epoch)."""
        ...

    def batches(self, epoch: int) -> int:
        """The number of steps in epoch `epoch` (at least one)."""
        ...

    def start_epoch(self, epoch: int) -> None:
        """The loop enters epoch `epoch` (0 is entered without a call)."""
        ...

    def batch(self, epoch: int, index: int) -> Any:
        """This process's share of step `index` of epoch `epoch`, on the device."""
        ...

    def batch_tokens(self, batch: Any) -> int:
        """How many tokens the step trains on, over all processes (for throughput)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The batch's mean loss, a float32 scalar with its graph. Must not sync with the host."""
        ...

    def end_step(self, bad: torch.Tensor) -> None:
        """The step is over; `bad` (a bool scalar on the device) says the guard rejected it."""
        ...

    def validate(self, model: torch.nn.Module, complete: bool = True) -> Optional[dict[str, Any]]:
        """The eval event's figures, "loss" first (lower is better: the best checkpoint
        follows it), over all processes; None when there is nothing to validate on.
        A pass with complete=False may score a sample; a complete pass over more than that
        sample then also gives the sample's loss as "selection_loss", and the best
        checkpoint follows that, so every pass is compared on the same examples."""
        ...

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """What the task must checkpoint beyond the weights: tensors (on the CPU), numbers,
        strings, lists and dicts only. Called on every process; rank 0's is saved."""
        ...

    def load_state_dict(self, saved: dict[str, Any], where: str) -> None:
        """Take back what state_dict returned (`where` names the file, for errors)."""
        ...

    def check_resume(self, saved: dict[str, Any], step: int) -> None:
        """Raise CharlmError when the checkpoint at `step` cannot be continued exactly."""
        ...
