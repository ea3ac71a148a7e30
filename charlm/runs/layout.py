"""The names of the files in a run directory, and which names belong to a run.

    run/
      config.json            RunConfig: model shape, training options, tokenizer kind
      tokenizer.json         the tokenizer (plus tokenizer.model for sentencepiece)
      last/model.safetensors weights at the latest checkpoint
      last/trainer_state.pt  optimizer, step, RNG states, data position, carried state
      best/model.safetensors weights with the best validation loss so far
      metrics.jsonl          one JSON object per log / eval / checkpoint event

A checkpoint folder being swapped in may briefly exist as `last.old` / `best.old`, and an
interrupted atomic write leaves a hidden `.NAME.*` temporary (see charlm/files.py).
"""

from __future__ import annotations

from charlm.config import RunConfig
from charlm.text.tokenizer import SPM_MODEL_FILE, TOKENIZER_FILE

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
LAST, BEST = "last", "best"
RUN_FORMAT_VERSION = RunConfig.format_version  # the config.json format this charlm writes and reads
RUN_FILES = (CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE, SPM_MODEL_FILE, LAST, BEST, LAST + ".old", BEST + ".old")


def is_leftover(name: str) -> bool:
    """A temporary file or folder of an interrupted atomic write."""
    if not name.startswith("."):
        return False
    if name.startswith((f".{LAST}.", f".{BEST}.")):
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{base}.") for base in RUN_FILES)
