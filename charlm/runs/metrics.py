"""The metrics journal of a run: metrics.jsonl, one JSON object per event.

Training appends an event per log, eval, checkpoint and session marker (start, resume, end),
each stamped with the time. A resumed run rewinds the journal to where its checkpoint was
taken, keeping the session markers. A line torn by a crash is skipped when read. Every
function takes the run folder; RunDirectory's methods of the same names call them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from charlm.files import atomic_write_bytes
from charlm.runs.layout import METRICS_FILE

# metrics events that mark a session of a run rather than its progress through the steps
SESSION_EVENTS = ("start", "resume", "end")


def append_metrics(root: Path, event: dict[str, Any], durable: bool = False) -> int:
    """Append one event; return the file's size after it. durable: fsync it too."""
    record = {"time": round(time.time(), 3), **event}
    with open(root / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        if durable:
            os.fsync(f.fileno())
        return f.tell()


def rewind_metrics(root: Path, size: int) -> int:
    """Forget the progress events written after a checkpoint, before a run continues from it.

    `size` is the metrics file's length when the checkpoint was taken. Events after it
    (train, eval, checkpoint, ...) are about steps the resumed run will take again, so
    they go; session markers (start, resume, end) stay, as the run's history. A line
    torn by a crash goes too. Returns how many lines were dropped."""
    path = root / METRICS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    if len(data) <= size:
        return 0
    kept, dropped = [], 0
    for line in data[size:].splitlines():
        try:
            event = json.loads(line).get("event")
        except (ValueError, AttributeError):
            event = None
        if event in SESSION_EVENTS:
            kept.append(line + b"\n")
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(path, data[:size] + b"".join(kept))
    return dropped


def read_metrics(root: Path) -> list[dict[str, Any]]:
    path = root / METRICS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash
    return events
