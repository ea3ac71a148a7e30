"""Convergence benchmark: `charlm train` with its default settings on tiny Shakespeare.

Runs the real CLI in a subprocess (last 10% of the text as validation, the default five-minute
budget), then prints the validation curve as a table and writes it as JSON. The figure that
matters is the wall time at which validation first drops below the target loss.

    python bench/train_shakespeare.py [--threads 2] [--json bench/results/train_shakespeare.json] [-- extra train options]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=1.70, help="validation loss to reach, nats/char")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "train_shakespeare.json")
    parser.add_argument("extra", nargs="*", help="more `charlm train` options (after --)")
    args = parser.parse_args()

    data = str(SHARED) if SHARED.is_file() else "shakespeare"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "charlm", "train", "--data", data, "--out", str(out),
                   "--threads", str(args.threads), "--sample-length", "200", *args.extra]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    start = next(e for e in events if e["event"] == "start")
    evals = [e for e in events if e["event"] == "eval"]
    reached = next((e for e in evals if e["loss"] < args.target), None)
    print(f"charlm train on tiny Shakespeare: {start['parameters']:,} parameters, {start['precision']}, "
          f"{start['threads']} threads, {wall:.0f} s wall for the whole command")
    print(f"{'step':>7} {'time (s)':>9} {'val nats/char':>14} {'val bpc':>8}")
    for e in evals:
        print(f"{e['step']:>7} {e['elapsed']:>9.1f} {e['loss']:>14.4f} {e['bpc']:>8.4f}")
    if reached:
        print(f"first below {args.target}: {reached['loss']:.4f} at {reached['elapsed']:.0f} s (step {reached['step']})")
    else:
        print(f"never below {args.target}")
    result = {
        "command": " ".join(command[1:]),
        "wall_s": round(wall, 1),
        "parameters": start["parameters"],
        "precision": start["precision"],
        "threads": start["threads"],
        "curve": [{"step": e["step"], "elapsed_s": e["elapsed"], "val_loss": e["loss"], "val_bpc": e["bpc"]} for e in evals],
        "target": args.target,
        "reached_at_s": reached["elapsed"] if reached else None,
        "sample": proc.stdout,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
