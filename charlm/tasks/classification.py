"""The classification task, and `ClassifierTrainer`: the training engine bound to it.

ClassificationTask implements charlm.training.task.Task for many-to-one classification:
each step is a batch of labelled texts of similar length (class_batches.py), the loss is
the cross entropy of the (B, C) logits (each class weighed by the inverse of its frequency
with class_weights "auto"), and no state is carried from one batch to the next. Validation
classifies the whole validation split and gives its loss, accuracy and macro-F1; the best
checkpoint follows the error of the chosen metric (1 - accuracy, or 1 - macro-F1), given to
the engine as "selection_loss", and with a patience the task stops the run (stop_reason
"early_stop") after that many validations without improvement.

Transfer (--from-lm): build_model copies a language model's embedding and recurrent
weights into the new classifier (models/classifier.transfer_from_lm); those parameters form
the "transferred" learning-rate group, whose rate is lm_lr_factor times the others' and
zero for the first freeze_epochs (only the new layers train then). A checkpoint keeps a
check of the training data and the early-stopping count, so a resume continues exactly.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from charlm.classifier_config import ClassifierConfig, ClassifyConfig
from charlm.config import TrainConfig
from charlm.errors import CharlmError
from charlm.hardware import autocast
from charlm.inference.classification_metrics import class_report
from charlm.inference.classifying import EncodedTexts, predict
from charlm.models.classifier import SequenceClassifier, transfer_from_lm
from charlm.runs.directory import RunDirectory
from charlm.tasks.class_batches import BucketBatcher
from charlm.training import distributed
from charlm.training.distributed import SINGLE, World
from charlm.training.engine import Engine

TRANSFERRED, NEW = "transferred", "new"


class ClassificationTask:
    """Labelled texts -> one class each; see the module docstring."""

    def __init__(self, model_config: ClassifierConfig, config: TrainConfig, options: ClassifyConfig,
                 train: EncodedTexts, val: EncodedTexts, device: torch.device, precision: str,
                 world: World = SINGLE, lm_weights: Optional[dict[str, torch.Tensor]] = None):  # fmt: skip
        distributed.check_lane_share(config.batch_size, world.size)
        self.model_config, self.config, self.options = model_config, config, options
        self.train_texts, self.val_texts = train, val
        self.device, self.precision, self.world = device, precision, world
        self.lm_weights = lm_weights
        self.batcher = BucketBatcher(train, config.batch_size, config.seed, distributed.lane_share(world))
        self.transferred: set[str] = set()
        counts = np.bincount(train.labels, minlength=model_config.classes).astype(np.float64)
        self.class_weights = None
        if options.class_weights == "auto":
            weights = len(train) / (model_config.classes * np.maximum(counts, 1.0))
            self.class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
        self.best_metric: Optional[float] = None
        self.evals_since_best = 0
        self._fingerprint: Optional[str] = None

    def build_model(self, device: torch.device) -> SequenceClassifier:
        model = SequenceClassifier(self.model_config)
        if self.lm_weights is not None:
            self.transferred = set(transfer_from_lm(model, self.lm_weights))
        return model.to(device)

    def describe(self) -> dict[str, Any]:
        return {
            "task": "classify",
            "train_examples": len(self.train_texts),
            "val_examples": len(self.val_texts),
            "classes": self.model_config.classes,
            "train_tokens": int(len(self.train_texts.ids)),
            "transferred": sorted(self.transferred),
        }

    # ----- learning-rate groups (the engine asks, when the task has them) --------------------
    def parameter_group(self, name: str) -> str:
        return TRANSFERRED if name in self.transferred else NEW

    def lr_factors(self, epoch_progress: float) -> dict[str, float]:
        frozen = epoch_progress < self.options.freeze_epochs
        return {TRANSFERRED: 0.0 if frozen else self.options.lm_lr_factor, NEW: 1.0}

    # ----- steps --------------------------------------------------------------------------
    def batches(self, epoch: int) -> int:
        return self.batcher.batches()

    def start_epoch(self, epoch: int) -> None:
        pass

    def batch(self, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, lengths, labels = self.batcher.batch(epoch, index)
        return x.to(self.device, non_blocking=True), lengths, labels.to(self.device, non_blocking=True)

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> int:
        return int(batch[1].sum()) * self.world.size  # about: every process's share is alike

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, lengths, labels = batch
        with autocast(self.device, self.precision):
            logits = model(x, lengths)  # (b, C)
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights)

    def end_step(self, bad: torch.Tensor) -> None:
        pass

    # ----- validation and early stopping ------------------------------------------------------
    def validate(self, model: torch.nn.Module, complete: bool = True) -> Optional[dict[str, Any]]:
        """The whole validation split classified (every process alike): loss, accuracy, macro-F1."""
        if len(self.val_texts) == 0:
            return None
        found = predict(model, self.val_texts, self.options.eval_batch_size, self.device, self.precision)
        report = class_report(self.val_texts.labels, found.probabilities.argmax(1), list(self.model_config.labels))
        metric = report.accuracy if self.options.metric == "accuracy" else report.macro_f1
        if self.best_metric is None or metric > self.best_metric:
            self.best_metric, self.evals_since_best = metric, 0
        else:
            self.evals_since_best += 1
        return {"loss": found.loss, "accuracy": report.accuracy, "macro_f1": report.macro_f1,
                "selection_loss": 1.0 - metric, "examples": len(self.val_texts), "complete": True}  # fmt: skip

    def stop_reason(self) -> Optional[str]:
        patience = self.options.patience
        return "early_stop" if patience is not None and self.evals_since_best >= patience else None

    # ----- checkpoint state -----------------------------------------------------------------
    def data_fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.train_texts.fingerprint()
        return self._fingerprint

    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "data": {"train_examples": len(self.train_texts), "fingerprint": self.data_fingerprint()},
            "early_stopping": {"best_metric": self.best_metric, "evals_since_best": self.evals_since_best},
        }

    def load_state_dict(self, saved: dict[str, Any], where: str) -> None:
        early = saved.get("early_stopping") or {}
        self.best_metric = early.get("best_metric")
        self.evals_since_best = int(early.get("evals_since_best", 0))

    def check_resume(self, saved: dict[str, Any], step: int) -> None:
        data = saved.get("data") or {}
        if data.get("fingerprint") not in (None, self.data_fingerprint()):
            then, now = data.get("train_examples"), len(self.train_texts)
            change = f"{then:,} examples then, {now:,} now" if then != now else "as many examples, different ones"
            raise CharlmError(
                f"the training data changed since this run was checkpointed at step {step} ({change}); "
                "an exact resume needs the same data: restore it, or start a new run"
            )


class ClassifierTrainer(Engine):
    """The training engine with the classification task. The options after `precision` are
    the Engine's, by keyword: on_event, should_stop, faults, world, check_every, spent_before."""

    def __init__(self, model_config: ClassifierConfig, config: TrainConfig, options: ClassifyConfig,
                 train: EncodedTexts, val: EncodedTexts, run_dir: RunDirectory, device: torch.device,
                 precision: str, lm_weights: Optional[dict[str, torch.Tensor]] = None, **engine: Any):  # fmt: skip
        task = ClassificationTask(model_config, config, options, train, val, device, precision,
                                  engine.get("world", SINGLE), lm_weights)  # fmt: skip
        super().__init__(task, config, run_dir, device, precision, **engine)
