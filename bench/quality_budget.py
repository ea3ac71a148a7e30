"""Quality per minute: validation loss on tiny Shakespeare after fixed wall-clock budgets.

For each budget (default 2, 5 and 10 minutes) it runs the real `charlm train` in a subprocess
with `--max-time` set to the budget and every other option at its default (the recommended
CPU settings), so the learning-rate schedule is sized to that budget. The last 10% of the
text is the validation split, as in the transformer figures issue #5 quotes. The budget
counts everything after the corpus is ready: training steps, validation passes, checkpoints.

As a baseline measured in the same run it can also train the quick untuned bare-PyTorch
LSTM issue #5 describes (Embedding 64 -> 2x384 LSTM -> Linear, dropout 0.2, B=32, T=128,
AdamW 4e-3 with 100 warmup steps and cosine decay over the time budget, bf16 autocast where
the CPU has it), scored on the same split by the same fp32 method.

    python bench/quality_budget.py [--budgets 120,300,600] [--baseline-budgets 300] [-- extra train options]
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from common import REPO, SHAKESPEARE
from torch import nn

from charlm.hardware import autocast, cpu_supports_bf16
from charlm.inference.scoring import score_tokens
from charlm.text.corpus import prepare_corpus
from charlm.text.tokenizer import context_token_id

TARGETS = {300: 1.47, 600: 1.40}  # issue #5: below these, nats/char


def run_charlm(data: str, budget: float, threads: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "charlm",
            "train",
            "--data",
            data,
            "--out",
            str(out),
            "--threads",
            str(threads),
            "--max-time",
            str(budget),
            "--sample-length",
            "0",
            *extra,
        ]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=os.environ.copy())
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"charlm train failed:\n{proc.stderr}")
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((out / "config.json").read_text())
    start = next(e for e in events if e["event"] == "start")
    end = next(e for e in events if e["event"] == "end")
    evals = [e for e in events if e["event"] == "eval"]
    return {
        "command": "charlm " + " ".join(command[3:]),
        "parameters": start["parameters"],
        "precision": start["precision"],
        "model": config["model"],
        "batch_size": config["train"]["batch_size"],
        "seq_len": config["train"]["seq_len"],
        "lr": config["train"]["lr"],
        "steps": end["step"],
        "tokens": end["step"] * config["train"]["batch_size"] * config["train"]["seq_len"],
        "elapsed_s": end["elapsed"],
        "wall_s": round(wall, 1),
        "val_loss": evals[-1]["loss"],
        "val_bpc": evals[-1]["bpc"],
        "curve": [{"step": e["step"], "elapsed_s": e["elapsed"], "val_loss": e["loss"]} for e in evals],
    }


class QuickLSTM(nn.Module):
    """The baseline's model: nothing charlm-specific."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, 64)
        self.rnn = nn.LSTM(64, 384, 2, batch_first=True, dropout=0.2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(384, vocab)

    def forward(self, x, state=None):
        out, state = self.rnn(self.drop(self.embedding(x)), state)
        return self.head(self.drop(out)), state


def run_baseline(corpus, budget: float, precision: str) -> dict:
    torch.manual_seed(0)
    B, T, peak, warmup = 32, 128, 4e-3, 100
    train = torch.from_numpy(corpus.splits["train"].astype("int64"))
    lanes = train[: (len(train) // B) * B].view(B, -1)  # (B, N/B)
    model = QuickLSTM(corpus.tokenizer.vocab_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak)
    device = torch.device("cpu")
    state, step, position = None, 0, 0
    started = time.perf_counter()
    while (spent := time.perf_counter() - started) < budget:
        lr = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * spent / budget))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if position + T + 1 > lanes.size(1):
            position, state = 0, None
        x, y = lanes[:, position : position + T], lanes[:, position + 1 : position + T + 1]
        with autocast(device, precision):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = tuple(s.detach() for s in state)
        position += T
        step += 1
    score = score_tokens(model, corpus.splits["val"], context_token_id(corpus.tokenizer), 16, 256, device, "fp32")
    return {
        "steps": step,
        "tokens": step * B * T,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "val_loss": score.loss,
        "precision": precision,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> int:
    parser = common.parser(__doc__, "quality_budget")
    parser.add_argument("--budgets", default="120,300,600", help="seconds, comma-separated")
    parser.add_argument("--baseline-budgets", default="300", help="budgets for the bare-PyTorch baseline (empty: none)")
    parser.add_argument("extra", nargs="*", help="more `charlm train` options (after --), for tuning trials")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if not SHAKESPEARE.is_file():
        print(f"this benchmark needs {SHAKESPEARE} (the shared corpora beside the checkout)", file=sys.stderr)
        return 1
    budgets = [float(b) for b in args.budgets.split(",") if b]
    baseline_budgets = [float(b) for b in args.baseline_budgets.split(",") if b]

    rows, baselines = [], []
    print(f"tiny Shakespeare, last 10% as validation, {args.threads} threads; extra options: {args.extra or 'none'}")
    print(
        f"{'who':<9} {'budget':>7} {'params':>10} {'steps':>7} {'tokens':>11} {'val nats':>9} {'val bpc':>8} "
        f"{'target':>7}"
    )
    for budget in budgets:
        row = run_charlm(str(SHAKESPEARE), budget, args.threads, args.extra)
        row["budget_s"] = budget
        row["target"] = TARGETS.get(int(budget))
        rows.append(row)
        target = f"<{row['target']}" if row["target"] else ""
        print(
            f"{'charlm':<9} {budget:>6.0f}s {row['parameters']:>10,} {row['steps']:>7,} {row['tokens']:>11,} "
            f"{row['val_loss']:>9.4f} {row['val_bpc']:>8.4f} {target:>7}",
            flush=True,
        )
    if baseline_budgets:
        with tempfile.TemporaryDirectory() as tmp:
            corpus = prepare_corpus(str(SHAKESPEARE), cache_root=Path(tmp), threads=args.threads)
            precision = "bf16" if cpu_supports_bf16() else "fp32"
            for budget in baseline_budgets:
                row = run_baseline(corpus, budget, precision)
                row["budget_s"] = budget
                baselines.append(row)
                print(
                    f"{'baseline':<9} {budget:>6.0f}s {row['parameters']:>10,} {row['steps']:>7,} "
                    f"{row['tokens']:>11,} {row['val_loss']:>9.4f} {row['val_loss'] / math.log(2):>8.4f}",
                    flush=True,
                )

    result = {"threads": args.threads, "extra": args.extra, "charlm": rows, "baseline": baselines}
    common.write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
