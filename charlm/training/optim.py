"""The optimizer and the learning-rate schedule.

AdamW (the fused kernel where torch has one for the device) with weight decay on weight
matrices only, and a learning rate that is a function of the step and of `progress` in
[0, 1] (the largest fraction used of any stop budget: steps, seconds, epochs):

    lr = (min_lr + (peak - min_lr) * (1 + cos(pi * progress)) / 2) * min(1, (step + 1) / warmup)

so a run limited by time decays to min_lr exactly when its time is up.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from charlm.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    floor = config.lr * config.min_lr_ratio
    cosine = floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    return cosine * warmup


def build_optimizer(
    model: torch.nn.Module, config: TrainConfig, group_of: Optional[Callable[[str], str]] = None
) -> torch.optim.AdamW:
    """AdamW over two groups, in this order: weight matrices (decayed), then biases and the
    embedding table (not decayed: a lookup, not a map).

    group_of(name), when a task gives it, names a parameter's learning-rate group (a
    classifier's transferred layers and its new ones); each of the two groups is then cut
    by it, in the order the names first occur, and each group carries its "name", by which
    the task's lr_factors scale its rate.

    A tied output matrix (tie_weights: head.weight IS embedding.weight) is one parameter,
    which named_parameters() names once, as embedding.weight: it is not decayed. That is on
    purpose: it keeps the numerics of every run trained so far (decaying it would change
    them), and the tied matrix is first of all the embedding table. The group order and the
    parameter order within each group are part of the checkpoint format (the optimizer's
    state is saved by index), so neither may change."""
    cut: dict[tuple[bool, str], list] = {}
    for decayed in (True, False):
        for name, param in model.named_parameters():
            if (param.dim() >= 2 and not name.startswith("embedding")) == decayed:
                cut.setdefault((decayed, group_of(name) if group_of else ""), []).append(param)
    groups = []
    for (decayed, group), params in cut.items():
        groups.append({"params": params, "weight_decay": config.weight_decay if decayed else 0.0})
        if group_of:
            groups[-1]["name"] = group
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99), fused=True)
    except (RuntimeError, TypeError):  # older torch has no fused kernel for this device
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))
