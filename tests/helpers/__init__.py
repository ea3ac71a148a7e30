"""What the tests share, in one place: `from helpers import run_cli, word_text, ...`.

texts: generated corpora and the real ones (shared_file skips without them); cli: the CLI in
this process or a child, child environments, the check every user error must pass, folder
snapshots; runs: tiny runs and Trainers trained for real, metrics.jsonl readers. Fixtures
live in conftest.py; test modules never import each other or conftest.
"""

from .cli import (
    ERROR_PREFIX,
    FORCE_TERMINAL_VARS,
    SAFE,
    TINY,
    TINY_BATCH,
    TINY_MODEL,
    Finished,
    assert_user_error,
    charlm_command,
    child_env,
    console_script,
    entries,
    file_size_limit,
    hidden_entries,
    invoke,
    run_cli,
    snapshot,
)
from .runs import (
    CPU,
    MODEL_DEFAULTS,
    TRAIN_DEFAULTS,
    checkpoint_weights,
    end_event,
    kinds,
    make_corpus,
    new_trainer,
    of_kind,
    read_config,
    read_events,
    resumed_trainer,
    same_weights,
    train_into,
    train_tiny_run,
)
from .texts import (
    MULTISCRIPT_LINES,
    REPO,
    SHARED_DATA,
    WORDS,
    multiscript_text,
    numbered_lines,
    shared_file,
    udhr_slice,
    word_text,
    write_text,
)

__all__ = [
    "CPU", "ERROR_PREFIX", "FORCE_TERMINAL_VARS", "MODEL_DEFAULTS", "MULTISCRIPT_LINES", "REPO", "SAFE",
    "SHARED_DATA", "TINY", "TINY_BATCH", "TINY_MODEL", "TRAIN_DEFAULTS", "WORDS", "assert_user_error",
    "charlm_command", "checkpoint_weights", "child_env", "console_script", "end_event", "entries",
    "file_size_limit", "Finished", "hidden_entries", "invoke", "kinds", "make_corpus", "multiscript_text",
    "new_trainer", "numbered_lines", "of_kind", "read_config", "read_events", "resumed_trainer", "run_cli",
    "same_weights", "shared_file", "snapshot", "train_into", "train_tiny_run", "udhr_slice", "word_text",
    "write_text",
]  # fmt: skip
