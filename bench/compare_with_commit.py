"""Train the same short runs with an older commit and with this tree; the losses must be equal.

    python bench/compare_with_commit.py [--commit 3fa6121]

The commit is extracted with `git archive <commit> | tar -x` into a temporary folder. Each
tree then trains a short LSTM run and a short GRU run (`python -m charlm train`, one CPU
thread, fp32, a fixed seed, dropout on so the RNG draws matter) in a subprocess with
PYTHONPATH set to that tree and the working directory a neutral temporary folder (`python
-m` puts the working directory first on sys.path); a pre-check prints which charlm each
tree imports, and the script stops if it is not that tree's. Every train and eval loss in
the runs' metrics.jsonl is compared exactly (the repr of the float). The table goes to
stdout, the JSON to bench/results/compare_with_commit.json; the exit status is 1 if any
loss differs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, parser, training_text, write_result

SHORT_RUN = ["--max-steps", "120", "--eval-every", "40", "--log-every", "10", "--checkpoint-every", "40",
             "--layers", "2", "--hidden", "64", "--embed", "32", "--batch-size", "8", "--seq-len", "32",
             "--dropout", "0.2", "--sample-length", "0"]  # fmt: skip
FIXED = ["--device", "cpu", "--threads", "1", "--precision", "fp32", "--seed", "1234"]


def cpu_facts() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "avx512_bf16": "avx512_bf16" in flags}


def environment(tree: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHARLM_", "PYTHON"))}
    return {
        **env,
        "PYTHONPATH": str(tree),
        "CHARLM_DATA_DIR": str(cache / "data"),
        "CHARLM_CACHE_DIR": str(cache / "cache"),
    }


def imported_from(tree: Path, env: dict, cwd: Path) -> Path:
    done = subprocess.run([sys.executable, "-c", "import charlm; print(charlm.__file__)"], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)  # fmt: skip
    path = Path(done.stdout.strip()).resolve()
    if tree.resolve() not in path.parents:
        sys.exit(f"the run meant for {tree} imported {path}: fix PYTHONPATH or the working directory")
    return path


def losses(run: Path) -> list[tuple[str, int, str]]:
    """(kind, step, repr(loss)) of every train and eval event, in order."""
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] in ("train", "eval"):
            out.append((event["event"], event["step"], repr(event["loss"])))
    return out


def train(tree: Path, cell: str, data: Path, work: Path) -> tuple[list, str]:
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)
    env = environment(tree, work / f"cache-{tree.name}")
    where = imported_from(tree, env, cwd)
    out = work / f"{tree.name}-{cell}"
    command = [sys.executable, "-m", "charlm", "train", "--data", str(data), "--out", str(out), "--cell", cell,
               *SHORT_RUN, *FIXED]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training with {tree} failed:\n{done.stderr}")
    return losses(out), str(where)


def main() -> int:
    args = parser(__doc__, "compare_with_commit")
    args.add_argument("--commit", default="3fa6121")
    args.add_argument("--cells", nargs="+", default=["lstm", "gru"])
    options = args.parse_args()
    with tempfile.TemporaryDirectory(prefix="charlm-compare-") as folder:
        work = Path(folder)
        old = work / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", options.commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        data = training_text(work)
        rows, imports, equal = [], {}, True
        for cell in options.cells:
            (before, imports["old"]), (after, imports["new"]) = (
                train(old, cell, data, work),
                train(REPO, cell, data, work),
            )
            if [r[:2] for r in before] != [r[:2] for r in after]:
                print(f"{cell}: the runs logged different events: {before} vs {after}")
                equal = False
            for (kind, step, a), (_, _, b) in zip(before, after, strict=False):
                rows.append({"cell": cell, "event": kind, "step": step, "old": a, "new": b, "equal": a == b})
                equal &= a == b
    print(f"{'cell':5} {'event':6} {'step':>5}  {'loss at ' + options.commit:22} {'loss now':22} equal")
    for r in rows:
        print(
            f"{r['cell']:5} {r['event']:6} {r['step']:>5}  {r['old']:22} {r['new']:22} {'yes' if r['equal'] else 'NO'}"
        )
    print(f"{sum(r['equal'] for r in rows)} of {len(rows)} losses equal to the last digit; charlm imported from "
          f"{imports['old']} and {imports['new']}")  # fmt: skip
    write_result(options.json, {"commit": options.commit, "equal": equal, "data": str(data), "options": SHORT_RUN + FIXED,
                                **cpu_facts(), "rows": rows})  # fmt: skip
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
