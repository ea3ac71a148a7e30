"""Distributed training throughput on the CPU: N torchrun processes against one process, same global batch.

Each configuration is a real `charlm train` (one process, all the threads) or a real
`torchrun --standalone --nproc_per_node=N -m charlm train` (threads shared out), with the
same model, global batch and step count. Throughput is the median tokens per second of the
train events after the first (which includes start-up), taken from metrics.jsonl; the
configurations alternate in rounds and each keeps its best round, and the table gives each
as a ratio to the single process measured in the same run.

    python bench/distributed_throughput.py [--threads 2] [--processes 2] [--hidden 256] [--json ...]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common


def tokens_per_second(out: Path) -> float:
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [e["tokens_per_s"] for e in events if e["event"] == "train"][1:]
    return statistics.median(rates)


def main() -> int:
    parser = common.parser(__doc__, "distributed_throughput")
    parser.add_argument("--processes", default="2", help="comma-separated process counts to compare with one")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    counts = [1] + [int(n) for n in args.processes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        source = common.training_text(Path(tmp))
        env = {**os.environ, "CHARLM_DATA_DIR": str(Path(tmp) / "data")}
        options = ["--data", str(source), "--hidden", str(args.hidden), "--embed", "64", "--layers", "2",
                   "--batch-size", str(args.batch), "--seq-len", str(args.seq_len), "--max-steps", str(args.steps),
                   "--log-every", "10", "--eval-every", str(10**9), "--checkpoint-every", str(10**9),
                   "--sample-length", "0", "--precision", args.precision, "--device", "cpu", "--overwrite"]  # fmt: skip
        best: dict[int, float] = {}
        for _ in range(args.rounds):
            for count in counts:
                threads = max(1, args.threads // count)
                out = Path(tmp) / f"run-{count}"
                launcher = [sys.executable, "-m", "charlm"]
                if count > 1:
                    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={count}", "-m", "charlm"]  # fmt: skip
                done = subprocess.run([*launcher, "train", *options, "--threads", str(threads), "--out", str(out)],
                                      env=env, capture_output=True, text=True)  # fmt: skip
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return 1
                best[count] = max(best.get(count, 0.0), tokens_per_second(out))

    rows = []
    print(
        f"2x{args.hidden} LSTM, global B={args.batch}, T={args.seq_len}, {args.precision}, {args.threads} cores in all"
    )
    print(f"{'processes':>9} {'threads each':>12} {'tok/s':>9} {'vs one':>7}")
    for count in counts:
        threads = max(1, args.threads // count)
        ratio = best[count] / best[1]
        rows.append({"processes": count, "threads_per_process": threads, "tokens_per_s": round(best[count], 1),
                     "ratio_to_one_process": round(ratio, 3)})  # fmt: skip
        print(f"{count:>9} {threads:>12} {best[count]:>9,.0f} {ratio:>6.2f}x")
    common.write_result(args.json, {"hidden": args.hidden, "batch": args.batch, "seq_len": args.seq_len,
                                    "precision": args.precision, "threads": args.threads, "rows": rows})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
