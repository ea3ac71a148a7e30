"""Checkpoints and events on disk: what the engine writes to the run directory, and reads back.

Only rank 0 touches the run directory. A checkpoint is taken by every process together
(`Checkpointer.save`): the processes' RNG states are gathered, their weights compared by
digest (DDP keeps them equal; a checkpoint must not hide it if not), and rank 0 writes the
checkpoint event to metrics.jsonl (fsynced) before the files, so the trainer state can
record the journal's length after it and a resume rewinds the journal to exactly there.
Reading a checkpoint back (`read_last`) happens on rank 0, which sends it to the others.

Write failures become one CharlmError (errors.write_error: a full disk says so) that names
the checkpoint left intact and the command that continues from it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

import torch

from charlm.errors import CharlmError, write_error
from charlm.runs.directory import BEST, LAST, METRICS_FILE, STATE_FILE, RunDirectory
from charlm.training import distributed, rngstate
from charlm.training.distributed import World
from charlm.training.resume import resume_command
from charlm.training.state import TrainerState

# the fix write_error offers besides freeing disk space
MOVE_THE_RUN = "move the run folder elsewhere"


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of a model's weights, bit for bit: equal on every process, or DDP went wrong."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class EventLog:
    """Events to metrics.jsonl and to a listener; only rank 0 logs."""

    def __init__(self, run_dir: RunDirectory, world: World, listener: Callable[[dict[str, Any]], None]):
        self.run_dir = run_dir
        self.world = world
        self.listener = listener

    def emit(self, event: dict[str, Any], durable: bool = False) -> int:
        """Log `event`; returns metrics.jsonl's size after it (0 on the other ranks)."""
        if not self.world.is_main:
            return 0
        try:
            size = self.run_dir.append_metrics(event, durable=durable)
        except OSError as exc:
            error = write_error(exc, METRICS_FILE, self.run_dir.path, MOVE_THE_RUN)
            raise CharlmError(f"{error}; continue with: {self.resume_command()}") from None
        self.listener(event)
        return size

    def resume_command(self, extra: str = "") -> str:
        return resume_command(self.run_dir.path, distributed=self.world.distributed, extra=extra)


class Checkpointer:
    """Writes and reads the run directory's checkpoints for the engine, and knows the step
    of the last one (`last_step`, None until one is written or read)."""

    def __init__(self, run_dir: RunDirectory, world: World, device: torch.device, events: EventLog):
        self.run_dir = run_dir
        self.world = world
        self.device = device
        self.events = events
        self.last_step: Optional[int] = None  # of the checkpoint written or read last, in this session

    @property
    def where(self) -> str:
        """The trainer state's path, for messages."""
        return f"{self.run_dir.path / LAST / STATE_FILE}"

    def gather_rngs(self) -> list[dict[str, Any]]:
        """Every process's RNG states, in rank order (all processes call this together)."""
        return distributed.gather(self.world, rngstate.capture(self.device))

    def save(self, model: torch.nn.Module, step: int, val_loss: Optional[float], best: bool,
             state: Callable[[int], TrainerState]) -> None:  # fmt: skip
        """Checkpoint `model` at `step`: best weights first (when `best`), then last weights
        with state(size of metrics.jsonl after the checkpoint event). Every process calls this."""
        intact = self.last_step  # left in place if this one fails
        event: dict[str, Any] = {"event": "checkpoint", "step": step, "which": [LAST, BEST] if best else [LAST]}
        if self.world.distributed:
            digests = distributed.gather(self.world, weights_digest(model))
            if len(set(digests)) > 1:
                raise CharlmError(
                    f"the processes' weights differ at step {step} (digests {', '.join(digests)}); this is a "
                    f"bug in charlm or torch, please report it; the checkpoint from step {intact} is intact"
                )
            event["weights_digests"] = digests
        if not self.world.is_main:
            self.last_step = step
            return
        meta = {"step": step, "val_loss": val_loss}
        try:
            size = self.events.emit(event, durable=True)
            if best:
                self.run_dir.save_checkpoint(BEST, model, meta)
            self.run_dir.save_checkpoint(LAST, model, meta, state(size).to_dict())
        except OSError as exc:
            error = write_error(exc, f"the checkpoint at step {step}", self.run_dir.path, MOVE_THE_RUN)
            if intact is not None:
                then = f"the checkpoint from step {intact} is intact: continue with: {self.events.resume_command()}"
            else:
                then = "nothing was saved: start the run again with --overwrite"
            raise CharlmError(f"{error}; {then}") from None
        self.last_step = step

    def read_last(self, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(weights on the CPU for `model`, the trainer state as saved) of the last checkpoint,
        on every process: rank 0 reads them and sends them to the others."""
        weights = saved = None
        if self.world.is_main:
            saved = self.run_dir.load_trainer_state()
            weights = self.run_dir.read_weights(LAST, model)
        return distributed.broadcast(self.world, (weights, saved))

    def restore_rngs(self, state: TrainerState, seed: int) -> None:
        """This process's generators as the checkpoint left them. A checkpoint written by
        another number of processes has no state for this one beyond rank 0: its dropout
        draws start afresh, seeded from the run's seed and the step."""
        ranks = state.rng_ranks
        if ranks and len(ranks) == self.world.size:
            rngstate.restore(ranks[self.world.rank], self.device)
        elif self.world.is_main:
            rngstate.restore(state.rng, self.device)
        else:
            torch.manual_seed(distributed.rank_seed(seed + state.step, self.world.rank))
