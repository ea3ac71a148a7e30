"""Issue 14, the best model in N minutes on any CPU and any text: charlm against nanoGPT and a bare LSTM.

On the same machine, one run at a time, each contender trains on the same single file, the
last 10% of its characters held out for validation, for fixed wall-clock budgets:
  * charlm: the real `charlm train` in a subprocess with --max-time set to the budget and every
    other option at its default (so it sizes its model and schedule itself), plus optional rows
    with --layers/--hidden fixed (--shapes, a sweep). Its budget counts everything after the
    corpus is ready: the start-up probe, steps, the periodic validation passes and checkpoints.
  * nanoGPT: ../shared/anchors/nanogpt/budget_nanogpt.py, nanoGPT's own model and character
    recipe for CPUs, run as it is (fp32 always); its budget covers the training loop only.
  * baseline: the quick untuned bare-PyTorch LSTM of issue #5 (Embedding 64 -> 2x384 LSTM ->
    Linear, dropout 0.2, B=32, T=128, AdamW 4e-3, 100 warmup steps, cosine over the budget).
All are scored on the whole validation split in fp32, in nats per character. The tables, the
targets and where charlm's budget went are budget_report.py's.

    python bench/quality_budget.py [--corpora shakespeare,ptb-char] [--file PATH] [--budgets 120,300,600]
        [--nanogpt-budgets ...] [--baseline-budgets 300] [--precision auto|fp32|bf16] [--threads 2]
        [--shapes 2x256,2x384] [-- extra charlm train options]
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import budget_report
import common
import torch
import torch.nn.functional as F
from common import REPO
from torch import nn

from charlm.hardware import autocast, cpu_supports_bf16
from charlm.inference.scoring import score_tokens
from charlm.text.corpus import prepare_corpus
from charlm.text.tokenizer import context_token_id

DATA = REPO.parent / "shared" / "data"
NANOGPT = REPO.parent / "shared" / "anchors" / "nanogpt" / "budget_nanogpt.py"
CORPORA = {
    "shakespeare": ["tinyshakespeare.txt"],
    "ptb-char": [f"ptb.char.train.part{i}of3.txt" for i in (1, 2, 3)],
    "wikitext2-raw": ["wikitext-2-raw.test.txt"],
    "c-code": ["code_nginx_src.txt"],
    "zh-novel": ["zh_sanguoyanyi.txt"],
    "multiscript": ["udhr_multiscript.txt"],
}
# SOURCES.md: the parts, concatenated in order, give back the original file
JOINED_SHA256 = {"ptb-char": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9"}


def corpus_file(name: str, folder: Path) -> Path:
    """The one file a named corpus trains on; several parts are joined into one file in `folder`."""
    parts = [DATA / part for part in CORPORA[name]]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise SystemExit(f"corpus {name} needs {', '.join(missing)} (the shared corpora beside the checkout)")
    if len(parts) == 1:
        return parts[0]
    joined = folder / f"{name}.txt"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))  # bytes as they are: no newline added between
    digest = hashlib.sha256(joined.read_bytes()).hexdigest()
    if name in JOINED_SHA256 and digest != JOINED_SHA256[name]:
        raise SystemExit(f"{name}: the joined parts have sha256 {digest}, not SOURCES.md's {JOINED_SHA256[name]}")
    return joined


def split_facts(path: Path, corpus) -> dict:
    """Both trainers' validation splits in characters: charlm keeps the last int(0.1 n), nanoGPT
    everything after int(0.9 n) and scores all of it but its first character."""
    raw = path.read_bytes()
    n = len(raw.decode("utf-8"))
    nanogpt_val = n - int(n * 0.9)
    charlm_val = corpus.chars["val"]
    return {
        "chars": n,
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "carriage_returns": raw.count(b"\r"),
        "charlm_val_chars": charlm_val,
        "charlm_scored_chars": charlm_val,
        "nanogpt_val_chars": nanogpt_val,
        "nanogpt_scored_chars": nanogpt_val - 1,
        "same_scored_chars": charlm_val == nanogpt_val - 1,
    }


def run_charlm(path: Path, budget: float, args, shape: str | None, env: dict) -> dict:
    """One `charlm train` run for `budget` seconds; shape "LxH" fixes --layers/--hidden."""
    sizes = []
    if shape:
        layers, hidden = shape.split("x")
        sizes = ["--layers", layers, "--hidden", hidden]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "charlm", "train", "--data", str(path), "--out", str(out),
                   "--threads", str(args.threads), "--precision", args.precision, "--max-time", f"{budget:g}",
                   "--sample-length", "0", *sizes, *args.extra]  # fmt: skip
        launched = time.time()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"charlm train failed:\n{proc.stderr}")
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((out / "config.json").read_text())
        if args.keep_runs:  # for later use (bench/dynamic_eval.py), outside the repository
            kept = args.keep_runs / f"{path.stem}-{shape or 'auto'}-{budget:g}s"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(out, kept)
    row = {"who": "charlm", "shape_option": shape, "budget_s": budget, "command": "charlm " + " ".join(command[3:])}
    return {**row, **budget_report.charlm_figures(events, config, launched, budget)}


def run_nanogpt(path: Path, budget: float, threads: int, split: dict) -> dict:
    """nanoGPT's CPU recipe for `budget` seconds of training, through its own script."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "nanogpt.json"
        command = [sys.executable, str(NANOGPT), str(path), "--budget", f"{budget:g}", "--threads", str(threads),
                   "--out", str(out)]  # fmt: skip
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"budget_nanogpt.py failed:\n{proc.stderr}")
        result = json.loads(out.read_text())
    corpus = result["corpus"]
    if (corpus["n_chars"], corpus["n_val_chars"]) != (split["chars"], split["nanogpt_val_chars"]):
        print(f"warning: nanoGPT read {corpus['n_chars']:,} chars with {corpus['n_val_chars']:,} for validation, "
              f"not {split['chars']:,} and {split['nanogpt_val_chars']:,}", file=sys.stderr)  # fmt: skip
    return {
        "who": "nanoGPT",
        "shape_option": None,
        "budget_s": budget,
        "command": "python " + " ".join(command[1:]),
        "parameters": result["params"],
        "precision": "fp32",
        "steps": result["iterations"],
        "tokens": result["tokens_trained"],
        "val_nats": result["val_nats_per_char"],
        "val_chars": corpus["n_val_chars"],
        "val_scored_chars": result["val_scored_chars"],
        "train_time_s": result["train_time_s"],
        "setup_time_s": result["setup_time_s"],
        "eval_time_s": result["eval_time_s"],
        "other_cores_during_train": result["environment"]["other_processes_cpu_cores_during_train"],
        "config": result["config"],
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
    """The bare loop for `budget` seconds, scored on the validation split as charlm scores it."""
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
    train_s = time.perf_counter() - started
    score = score_tokens(model, corpus.splits["val"], context_token_id(corpus.tokenizer), 16, 256, device, "fp32")
    return {
        "who": "baseline",
        "shape_option": None,
        "budget_s": budget,
        "command": f"in this process (QuickLSTM, {precision})",
        "parameters": sum(p.numel() for p in model.parameters()),
        "precision": precision,
        "steps": step,
        "tokens": step * B * T,
        "train_time_s": round(train_s, 1),
        "val_nats": score.loss,  # a char tokenizer: nats per token are nats per character
        "val_scored_chars": score.tokens,
    }


def budgets(text: str) -> list[float]:
    return [float(b) for b in text.split(",") if b.strip()]


def main() -> int:
    parser = common.parser(__doc__, "quality_budget")
    parser.add_argument("--corpora", help=f"comma-separated, of {', '.join(CORPORA)} (default: shakespeare)")
    parser.add_argument("--file", action="append", default=[], type=Path, help="any text file, too (repeatable)")
    parser.add_argument("--budgets", default="120,300,600", help="charlm's, seconds, comma-separated")
    parser.add_argument("--nanogpt-budgets", help="nanoGPT's (default: --budgets; empty: none)")
    parser.add_argument("--baseline-budgets", default="300", help="the bare-PyTorch baseline's (empty: none)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--shapes", default="", help="extra charlm rows with LAYERSxHIDDEN fixed, e.g. 2x256,2x384")
    parser.add_argument("--keep-runs", type=Path, help="copy each charlm run directory into this folder")
    parser.add_argument("extra", nargs="*", help="more `charlm train` options (after --), for tuning trials")
    args = parser.parse_args()
    names = [n for n in (args.corpora or ("" if args.file else "shakespeare")).split(",") if n]
    if unknown := [n for n in names if n not in CORPORA]:
        parser.error(f"--corpora: unknown {', '.join(unknown)}; choose from {', '.join(CORPORA)}")
    if bad := [s for s in args.shapes.split(",") if s and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", s)]:
        parser.error(f"--shapes: {', '.join(bad)} is not LAYERSxHIDDEN (e.g. 2x256)")
    if missing := [str(f) for f in args.file if not f.is_file()]:
        parser.error(f"--file: no such file {', '.join(missing)}")
    shapes = [s for s in args.shapes.split(",") if s]
    charlm_budgets, baseline_budgets = budgets(args.budgets), budgets(args.baseline_budgets)
    nanogpt_budgets = budgets(args.budgets if args.nanogpt_budgets is None else args.nanogpt_budgets)
    nanogpt_skipped = None
    if nanogpt_budgets and not NANOGPT.is_file():
        nanogpt_skipped, nanogpt_budgets = f"{NANOGPT} is absent (the shared anchors beside the checkout)", []
    torch.set_num_threads(args.threads)
    baseline_precision = args.precision if args.precision != "auto" else ("bf16" if cpu_supports_bf16() else "fp32")

    header = budget_report.machine()
    print(f"CPU {header['cpu']} ({header['cores']} cores; {' '.join(header['cpu_flags']) or 'none'} of "
          f"{', '.join(budget_report.FLAGS)}); torch {header['torch']}; {header['date']}")  # fmt: skip
    print(f"precision {args.precision} (charlm; baseline {baseline_precision}; nanoGPT fp32), {args.threads} "
          f"threads; extra charlm options: {' '.join(args.extra) or 'none'}")  # fmt: skip
    if nanogpt_skipped:
        print(f"nanoGPT skipped: {nanogpt_skipped}")
    result = {"machine": header, "precision": args.precision, "baseline_precision": baseline_precision,
              "threads": args.threads, "extra": args.extra, "shapes": shapes, "nanogpt_skipped": nanogpt_skipped,
              "corpora": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="quality-budget-") as tmp:
        cache = Path(tmp) / "cache"
        env = {**os.environ, "CHARLM_CACHE_DIR": str(cache)}
        corpora = [(n, corpus_file(n, Path(tmp))) for n in names] + [(f"file:{f.name}", f) for f in args.file]
        for name, path in corpora:
            # the same token cache charlm train reads: every run starts from a ready corpus
            corpus = prepare_corpus(str(path), cache_root=cache, threads=args.threads)
            facts = {"file": str(path), "split": split_facts(path, corpus)}
            runs = [(run_charlm, (path, b, args, shape, env)) for b in charlm_budgets for shape in [None, *shapes]]
            runs += [(run_nanogpt, (path, b, args.threads, facts["split"])) for b in nanogpt_budgets]
            runs += [(run_baseline, (corpus, b, baseline_precision)) for b in baseline_budgets]
            rows = []
            for run, run_args in runs:
                with budget_report.Contention() as contention:
                    row = run(*run_args)
                rows.append({**row, "other_cores": contention.cores})
            report = budget_report.analyse(name, rows)
            budget_report.print_corpus(name, facts, rows, report)
            result["corpora"][name] = {**facts, "rows": rows, **report}
            common.write_result(args.json, result)  # after each corpus: a long session keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
