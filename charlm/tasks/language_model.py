"""The language-model task, and `Trainer`: the training engine bound to it.

LanguageModelTask implements charlm.training.task.Task for stateful truncated BPTT: the
training split is cut into B lanes (lanes.py), each step takes the next (B, T) window of
every lane, and the recurrent state the window leaves is carried (detached) to the next
window of the same lanes; it is reset at each epoch start, where the lanes start over,
and zeroed after a step the guard rejected. Under torchrun each process holds a share of
the lanes (a LaneShare); a checkpoint gathers the carried state of all B lanes, and a
resume takes back this process's share. Validation scores the validation split the way
`charlm perplexity` does (inference/scoring.py), each process a share of the lanes.

Besides the carried state, a checkpoint keeps a check of the training data (token count,
fingerprint, the epoch's lane offset), so a resume refuses a corpus that changed. A new run
started from another (--init-from, init_from.py) gets that run's weights in build_model, over
the seeded initial ones, so the random state that follows is a fresh run's as ever.

`Trainer` is the engine with this task, under the constructor the CLI, the tests and the
README use; it lives here rather than in charlm.training because the engine never imports
a task. Its `state`, `batcher` and `val_tokens` are the task's.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from charlm.config import ModelConfig, TrainConfig
from charlm.errors import CharlmError
from charlm.hardware import autocast
from charlm.inference.scoring import DEFAULT_WINDOW, score_tokens
from charlm.models import state as states
from charlm.models.rnnlm import RNNLM
from charlm.runs.directory import RunDirectory
from charlm.tasks.init_from import InitSource
from charlm.tasks.lanes import LaneBatcher
from charlm.text.corpus import PreparedCorpus
from charlm.text.tokenizer import context_token_id
from charlm.training import distributed
from charlm.training.distributed import SINGLE, World
from charlm.training.engine import Engine, TrainResult

__all__ = ["LanguageModelTask", "Trainer", "TrainResult", "tokens_fingerprint"]


def tokens_fingerprint(tokens: np.ndarray, block: int = 1 << 24) -> str:
    """A hash of a token array's contents, to tell on resume whether the corpus changed."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(tokens.dtype).encode())
    for start in range(0, len(tokens), block):
        digest.update(np.ascontiguousarray(tokens[start : start + block]))
    return digest.hexdigest()


class LanguageModelTask:
    """Next-token prediction over TBPTT lanes; see the module docstring."""

    def __init__(self, model_config: ModelConfig, config: TrainConfig, corpus: PreparedCorpus,
                 device: torch.device, precision: str, world: World = SINGLE,
                 init_from: Optional[InitSource] = None):  # fmt: skip
        """init_from: the run whose weights a new run starts from (never for a resume, whose
        checkpoint replaces the weights built)."""
        distributed.check_lane_share(config.batch_size, world.size)
        self.init_from = init_from
        self.model_config = model_config
        self.config = config
        self.corpus = corpus
        self.device = device
        self.precision = precision
        self.world = world
        self.share = distributed.lane_share(world)
        self.batcher = LaneBatcher(
            corpus.splits["train"], config.batch_size, config.seq_len, seed=config.seed,
            random_offset=config.random_offset, share=self.share, pin_memory=(device.type == "cuda"),
        )  # fmt: skip
        self.val_tokens = corpus.splits["val"]
        self.context_id = context_token_id(corpus.tokenizer)
        self.state: Optional[states.State] = None  # carried from one window to the next
        self._next_state: Optional[states.State] = None  # what the step in progress left
        self._fingerprint: Optional[str] = None

    def build_model(self, device: torch.device) -> RNNLM:
        model = RNNLM(self.model_config)
        if self.init_from is not None:  # rank 0 reads them and sends them to the others
            weights = self.init_from.read_weights(model) if self.world.is_main else None
            model.load_state_dict(distributed.broadcast(self.world, weights))
        return model.to(device)

    def describe(self) -> dict[str, Any]:
        return {
            "train_tokens": int(len(self.corpus.splits["train"])),
            "val_tokens": int(len(self.val_tokens)),
            "tokens_per_epoch": self.batcher.tokens_per_epoch,
        }

    # ----- steps --------------------------------------------------------------------------
    def batches(self, epoch: int) -> int:
        return self.batcher.windows(epoch)

    def start_epoch(self, epoch: int) -> None:
        self.state = None  # the lanes start over

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batcher.batch(epoch, index)  # (b, T): this process's lanes
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return self.config.batch_size * self.config.seq_len  # the global B, over all processes

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        with autocast(self.device, self.precision):
            logits, self._next_state = model(x, self.state)  # (b, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def end_step(self, bad: torch.Tensor) -> None:
        # a state that produced a bad step is not carried on (zeros, as at an epoch start)
        self.state = states.zero_where(bad, states.detach(self._next_state))  # no host sync
        self._next_state = None

    def validate(self, model: torch.nn.Module, complete: bool = True) -> Optional[dict[str, Any]]:
        """The validation split scored as `charlm perplexity` scores it, in fp32.

        During training (complete=False) a pass scores at most about eval_tokens tokens: the
        first windows of every lane, a sample spread over the split. The complete pass
        scores everything and gives the same sample's loss as "selection_loss", by which
        the best checkpoint is chosen, so every pass is compared on the same tokens."""
        if len(self.val_tokens) == 0:
            return None
        windows = self.sample_windows()
        score = score_tokens(model, self.val_tokens, self.context_id, self.config.eval_batch_size, DEFAULT_WINDOW,
                             self.device, "fp32", part=self.share, prefix_windows=windows,
                             prefix_only=not complete)  # fmt: skip
        sample = score.prefix if windows is not None else None
        if self.world.distributed:  # each process scored a share of the lanes
            score.nll, tokens = distributed.agree(self.world, [score.nll, float(score.tokens)])
            score.tokens = int(tokens)
            if sample is not None and sample is not score:
                sample.nll, tokens = distributed.agree(self.world, [sample.nll, float(sample.tokens)])
                sample.tokens = int(tokens)
        corpus, total = self.corpus, max(len(self.val_tokens), 1)
        # a sample's characters, bytes and words are the split's in proportion (exact for characters)
        fraction = score.tokens / total
        score.chars, score.bytes = round(corpus.chars["val"] * fraction), round(corpus.bytes["val"] * fraction)
        score.words, score.unknown = round(corpus.words["val"] * fraction), corpus.unknown["val"]
        figures = {"loss": score.loss, "bpc": score.bits_per_char, "bpb": score.bits_per_byte,
                   "perplexity": score.perplexity, "word_perplexity": score.word_perplexity, "tokens": score.tokens,
                   "complete": score.tokens == len(self.val_tokens)}  # fmt: skip
        if complete and sample is not None and sample.tokens < score.tokens:
            figures["selection_loss"] = sample.loss
        return figures

    def sample_windows(self) -> Optional[int]:
        """Windows per lane a validation pass during training scores (None: all of them)."""
        if not self.config.eval_tokens:
            return None
        per_window = max(1, min(self.config.eval_batch_size, len(self.val_tokens))) * DEFAULT_WINDOW
        return max(1, -(-self.config.eval_tokens // per_window))

    # ----- checkpoint state -----------------------------------------------------------------
    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = tokens_fingerprint(self.corpus.splits["train"])
        return self._fingerprint

    def state_dict(self, epoch: int) -> dict[str, Any]:
        """The carried state of all B lanes on the CPU (gathered from every process, so
        every process must call this together), and the check of the training data."""
        mine = [t.cpu() for t in states.to_tensors(self.state)] if self.state is not None else None
        shares = distributed.gather(self.world, mine)
        carried = None if any(share is None for share in shares) else states.join_lanes(shares)  # (L, B, H)
        data = {
            "train_tokens": int(len(self.corpus.splits["train"])),
            "fingerprint": self.data_fingerprint(),
            "lane_offset": self.batcher.offset(epoch),
        }
        return {"carried_state": carried, "data": data}

    def load_state_dict(self, saved: dict[str, Any], where: str) -> None:
        carried = saved.get("carried_state")
        if not carried:  # an epoch start: every process starts from zeros
            self.state = None
            return
        B = self.config.batch_size
        if carried[0].shape[1] != B:
            raise CharlmError(
                f"{where} holds a carried state for {carried[0].shape[1]} lanes, not {B}; "
                "the checkpoint is damaged: start a new run with --overwrite"
            )
        first, last = self.share.bounds(B)
        mine = states.take_lanes(states.from_tensors(list(carried)), first, last)  # this process's lanes
        self.state = states.apply(lambda t: t.to(self.device), mine)

    def check_resume(self, saved: dict[str, Any], step: int) -> None:
        data = saved.get("data")
        if not data:
            return  # written before charlm recorded it
        then, now = int(data["train_tokens"]), int(len(self.corpus.splits["train"]))
        if then != now or data["fingerprint"] != self.data_fingerprint():
            change = f"{then:,} tokens then, {now:,} now" if then != now else "same length, different text"
            raise CharlmError(
                f"the training text changed since this run was checkpointed at step {step} ({change}); "
                "an exact resume needs the same corpus: restore it, or start a new run"
            )


class Trainer(Engine):
    """The training engine with the language-model task: charlm's `train`. The options after
    `precision` are the Engine's, by keyword: on_event, should_stop, faults, world, check_every,
    spent_before; and init_from, the task's (a new run's initial weights from another run)."""

    def __init__(self, model_config: ModelConfig, config: TrainConfig, corpus: PreparedCorpus, run_dir: RunDirectory,
                 device: torch.device, precision: str, **options: Any):  # fmt: skip
        self.corpus = corpus
        task = LanguageModelTask(model_config, config, corpus, device, precision, options.get("world", SINGLE),
                                 init_from=options.pop("init_from", None))  # fmt: skip
        super().__init__(task, config, run_dir, device, precision, **options)

    @property
    def state(self) -> Optional[states.State]:
        """The carried recurrent state of this process's lanes (None at an epoch start)."""
        return self.task.state

    @property
    def batcher(self) -> LaneBatcher:
        return self.task.batcher

    @property
    def val_tokens(self) -> np.ndarray:
        return self.task.val_tokens

    @val_tokens.setter
    def val_tokens(self, tokens: np.ndarray) -> None:
        self.task.val_tokens = tokens
