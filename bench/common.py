"""What every benchmark script shares: paths, the common options, the JSON result, a run folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """An argument parser with --threads and --json (default bench/results/<name>.json)."""
    result = argparse.ArgumentParser(description=doc.splitlines()[0])
    result.add_argument("--threads", type=int, default=2)
    result.add_argument("--json", type=Path, default=REPO / "bench" / "results" / f"{name}.json")
    return result


def write_result(path: Path, result: dict) -> None:
    """Write the JSON result, with the command that produced it, and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "command": "python " + " ".join(sys.argv)}, indent=1) + "\n")
    print(f"wrote {path}")


def training_text(folder: Path) -> Path:
    """Tiny Shakespeare, or without ../shared any text: speed does not depend on which."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE
    import torch

    path = folder / "text.txt"
    path.write_text((Path(torch.__file__).parent / "nn" / "modules" / "rnn.py").read_text() * 20)
    return path


def new_run(path: Path, corpus, model_config, train_config):
    """A fresh run directory ready for a Trainer."""
    from charlm.config import RunConfig
    from charlm.runs.directory import RunDirectory

    run = RunDirectory(path)
    run.prepare()
    run.save_tokenizer(corpus.tokenizer)
    run.write_config(RunConfig(model=model_config, train=train_config, tokenizer_kind=corpus.tokenizer.kind))
    return run
