"""The length-bucketed batches a classifier trains on.

`BucketBatcher` orders an epoch: the examples shuffled from a seed of
(seed, epoch), cut into pools of POOL_BATCHES batches, each pool sorted by length and cut
into batches, and the batches shuffled again, so a batch holds texts of similar length
(little padding) while every epoch still mixes them. A batch depends on (epoch, index)
alone, so a resumed run gets the same batches. The examples are EncodedTexts
(charlm.inference.classifying), which inference reads too.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from charlm.errors import CharlmError
from charlm.inference.classifying import EncodedTexts, pad
from charlm.models.state import LaneShare

POOL_BATCHES = 50  # batches sorted together by length: larger pools pad less and mix less


class BucketBatcher:
    """An epoch's batches of similar length, from a seed of (seed, epoch); see the module docstring.

    Under torchrun every process takes its share of each batch (share), so only full
    batches are used there; one process keeps the last, smaller one too."""

    def __init__(self, texts: EncodedTexts, batch_size: int, seed: int, share: LaneShare = LaneShare()):
        if len(texts) == 0:
            raise CharlmError("there is no training example to train on")
        self.texts, self.batch_size, self.seed, self.share = texts, batch_size, seed, share
        whole, rest = divmod(len(texts), batch_size)
        self.count = whole + (1 if rest and share.count == 1 else 0)
        if self.count == 0:
            raise CharlmError(
                f"--batch-size {batch_size} is more than the {len(texts):,} training examples shared among "
                f"{share.count} processes; give a smaller --batch-size"
            )
        self._epoch: Optional[int] = None
        self._plan: list[np.ndarray] = []

    def batches(self) -> int:
        return self.count

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches, each an array of example indices."""
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.texts))
            lengths = self.texts.lengths
            pool = self.batch_size * POOL_BATCHES
            batches = []
            for start in range(0, len(order), pool):
                chunk = order[start : start + pool]
                chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            # the one short batch (if any) is the last of the last pool; torchrun drops it
            batches = [batch for batch in batches if len(batch) == self.batch_size] + [
                batch for batch in batches if len(batch) < self.batch_size
            ]
            batches = batches[: self.count]
            self._plan = [batches[i] for i in rng.permutation(len(batches))]
            self._epoch = epoch
        return self._plan

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This process's share of batch `index`: ids (b, T), lengths (b,), labels (b,)."""
        rows = self.plan(epoch)[index]
        first, last = self.share.bounds(len(rows))
        rows = rows[first:last]
        x, lengths = pad(self.texts, rows)
        return x, lengths, torch.from_numpy(self.texts.labels[rows])
