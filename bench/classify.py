"""Issue 15, `charlm classify` on four real tasks: charlm against the textbook RNN and TF-IDF.

For each task the split is made once (charlm.text.labelled, seed --seed) and written as TSV
files in a work folder, so every system reads exactly the same examples:
  mr     MR sentence polarity: a seeded 90/10 train/test cut; validation is 10% of the 90%
  names  surnames by language, deduplicated, stratified 80/10/10
  trec   TREC-6 coarse question types: its own 500-question test set, validation 10% of train
  sms    SMS spam, stratified 80/10/10
Systems, one after another on the same machine (--systems):
  charlm     `charlm classify train` with its recommended (default) settings and --max-time --budget,
             then `charlm classify evaluate --json` on the test split
  charlm-lm  the same with --from-lm: first `charlm train` for --lm-budget seconds on the task's own
             training texts (one per line), then the classifier; both times are reported and summed
  textbook   the seed textbook model (classify_baselines.py): word Embedding(32) -> SimpleRNN(32) ->
             softmax, Adam, the 10,000 most frequent words, at most --budget seconds
  tfidf      TF-IDF over character 1-5-grams + logistic regression, analyzer and C chosen on validation
             (scikit-learn, benchmark-only: pip install scikit-learn; skipped with a note without it)
Every system picks its epoch/setting on the validation split and is scored once on the test split
by charlm.inference.classification_metrics.class_report. Throughput: training texts/s (texts seen
per second of training) and prediction texts/s (the test split, in this process, batched).

    python bench/classify.py [--tasks mr,names,trec,sms] [--systems charlm,charlm-lm,textbook,tfidf]
        [--budget 300] [--lm-budget 300] [--seed 0] [--threads 2] [--precision auto|fp32|bf16]
        [--work DIR] [--json bench/results/classify/<time>.json] [-- more charlm classify train options]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import budget_report
import classify_baselines as baselines
import common
import torch
from common import REPO

from charlm.inference.classification_metrics import class_report
from charlm.text.labelled import read_labelled, split_labelled

DATA = REPO.parent / "shared" / "data" / "classify"
SYSTEMS = ("charlm", "charlm-lm", "textbook", "tfidf")
# source, the given test set (else cut), val and test fractions of the cut
TASKS = {
    "mr": {"data": ["mr/rt-polarity.pos", "mr/rt-polarity.neg"], "test": None, "val": 0.1, "cut_test": 0.1},
    "names": {"data": "names", "test": None, "val": 0.1, "cut_test": 0.1},
    "trec": {"data": "trec/train_5500.label", "test": "trec/TREC_10.label", "val": 0.1, "cut_test": 0.0},
    "sms": {"data": "sms-spam/SMSSpamCollection", "test": None, "val": 0.1, "cut_test": 0.1},
}
PUBLISHED = {
    "mr": "word CNN with pretrained vectors 81.5%, NBSVM 79.4% (10-fold CV)",
    "trec": "word CNN 93.6%",
    "sms": "SVMs on word features about 97-98%",
    "names": "none published; the majority class (Russian) is 46.9% of lines",
}
BEATS_TFIDF = ("names", "trec")  # the targets: ahead of TF-IDF here, ahead of the textbook everywhere


def load_task(name: str, seed: int):
    """The task's LabelledSplits: train, val and test, every system's same examples."""
    task = TASKS[name]
    sources = task["data"] if isinstance(task["data"], list) else [task["data"]]
    data = read_labelled([str(DATA / s) for s in sources] if len(sources) > 1 else str(DATA / sources[0]))
    if task["test"]:
        return split_labelled(data, task["val"], 0.0, seed, test=read_labelled(str(DATA / task["test"])))
    if name == "mr":  # a seeded 90/10 cut first, its 10% the test split; then validation from the 90%
        first = split_labelled(data, task["cut_test"], 0.0, seed)
        return split_labelled(first.train, task["val"], 0.0, seed, test=first.val)
    return split_labelled(data, task["val"], task["cut_test"], seed)


def write_splits(folder: Path, splits) -> dict:
    """train/val/test.tsv for every system, and train_texts.txt (one text a line) for the language model."""
    folder.mkdir(parents=True, exist_ok=True)
    facts = {"labels": splits.labels, "notes": splits.notes}
    for part in ("train", "val", "test"):
        data = getattr(splits, part)
        baselines.write_tsv(folder / f"{part}.tsv", data.texts, data.labels)
        facts[part] = {"examples": len(data.texts), "per_class": {c: data.labels.count(c) for c in splits.labels}}
    # one text a line: a newline inside a text becomes a space (none of the four tasks has one)
    lines = "".join(" ".join(t.splitlines()) + "\n" for t in splits.train.texts)
    (folder / "train_texts.txt").write_text(lines, encoding="utf-8")
    return facts


def cli(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m charlm ARGS` from the checkout; its wall-clock seconds, start-up included."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "charlm", *args], cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"charlm {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - started


def journal(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def training_figures(run: Path) -> dict:
    """Steps, examples seen and training seconds from a classifier run's metrics.jsonl and config.json."""
    events = journal(run)
    config = json.loads((run / "config.json").read_text())
    end = next((e for e in reversed(events) if e.get("event") == "end"), {})
    batch = (config.get("train") or {}).get("batch_size")
    steps, elapsed = end.get("step"), end.get("elapsed")
    seen = end.get("examples_seen")
    if seen is None and steps is not None and batch:
        seen = steps * batch  # every step a full batch: an estimate, the last batch of an epoch may be short
    evals = [e for e in events if e.get("event") == "eval"]
    start = next((e for e in events if e.get("event") == "start"), {})
    return {
        "precision_used": start.get("precision"),
        "parameters": start.get("parameters"),
        "steps": steps,
        "batch_size": batch,
        "texts_seen": seen,
        "elapsed_s": elapsed,
        "train_texts_per_s": seen / elapsed if seen and elapsed else None,
        "model": config.get("model"),
        "classifier": config.get("classifier") or config.get("classify"),
        "val_curve": [{k: e.get(k) for k in ("step", "elapsed", "accuracy", "macro_f1", "loss")} for e in evals],
    }


def predict_in_process(run: Path, texts: list[str], threads: int) -> dict:
    """charlm's labels for the test texts through Classifier(run).predict (batched by length), timed."""
    from charlm.inference.classifier import Classifier

    classifier = Classifier(str(run), threads=threads)
    classifier.predict(texts[:8])  # a warm-up batch: the first call pays for lazy initialisation
    started = time.perf_counter()
    labels = [prediction.label for prediction in classifier.predict(texts)]
    seconds = time.perf_counter() - started
    return {"labels": labels, "predict_s": seconds, "predict_texts_per_s": len(texts) / seconds}


def run_charlm(folder: Path, splits, args, env: dict, from_lm: bool) -> dict:
    """`charlm classify train` (after `charlm train` for the LM when from_lm), evaluate, predict."""
    row, lm_s = {}, 0.0
    run = folder / ("charlm-lm" if from_lm else "charlm")
    common_options = ["--seed", str(args.seed), "--threads", str(args.threads), "--precision", args.precision]
    shutil.rmtree(run, ignore_errors=True)
    extra = []
    if from_lm:
        lm = folder / "lm"
        shutil.rmtree(lm, ignore_errors=True)
        lm_args = ["train", "--data", str(folder / "train_texts.txt"), "--out", str(lm), "--max-time",
                   f"{args.lm_budget:g}", "--sample-length", "0", *common_options]  # fmt: skip
        _, lm_s = cli(lm_args, env)
        lm_config = json.loads((lm / "config.json").read_text())
        end = next((e for e in journal(lm) if e.get("event") == "end"), {})
        row["lm"] = {"command": "charlm " + " ".join(lm_args), "wall_s": lm_s, "model": lm_config.get("model"),
                     "steps": end.get("step"), "elapsed_s": end.get("elapsed"),
                     "val_loss_nats_per_token": end.get("last_val_loss"),
                     "budget_choice": (lm_config.get("extra") or {}).get("budget")}  # fmt: skip
        extra = ["--from-lm", str(lm)]
    train_args = ["classify", "train", "--data", str(folder / "train.tsv"), "--val-data", str(folder / "val.tsv"),
                  "--out", str(run), "--max-time", f"{args.budget:g}", *common_options, *extra, *args.extra]  # fmt: skip
    _, train_s = cli(train_args, env)
    evaluate_args = ["classify", "evaluate", str(run), "--data", str(folder / "test.tsv"), "--json"]
    evaluated, _ = cli([*evaluate_args, "--threads", str(args.threads)], env)
    evaluation = json.loads(evaluated.stdout)
    predicted = predict_in_process(run, splits.test.texts, args.threads)
    ids = {label: i for i, label in enumerate(splits.labels)}
    row.update(training_figures(run))
    row.update({
        "command": "charlm " + " ".join(train_args),
        "predicted": [ids[label] for label in predicted["labels"]],
        "train_s": train_s,
        "lm_s": lm_s,
        "total_s": train_s + lm_s,
        "predict_s": predicted["predict_s"],
        "predict_texts_per_s": predicted["predict_texts_per_s"],
        "evaluate": {k: evaluation.get(k) for k in ("accuracy", "macro_f1", "examples")},
    })  # fmt: skip
    return row


def judge(name: str, rows: dict) -> list[dict]:
    """The issue's targets on one task: charlm (either row) ahead of the textbook, and of TF-IDF on names/TREC."""
    mine = {s: rows[s] for s in ("charlm", "charlm-lm") if s in rows and "accuracy" in rows[s]}
    others = ["textbook"] + (["tfidf"] if name in BEATS_TFIDF else [])
    targets = []
    for other in others:
        if other not in rows or "accuracy" not in rows[other] or not mine:
            continue
        best = max(mine, key=lambda s: mine[s]["accuracy"])
        gap = mine[best]["accuracy"] - rows[other]["accuracy"]
        targets.append({"target": f"charlm ahead of {other}", "charlm_system": best, "gap": gap, "met": gap > 0})
    return targets


def print_task(name: str, facts: dict, rows: dict, targets: list[dict]) -> None:
    sizes = ", ".join(f"{part} {facts[part]['examples']:,}" for part in ("train", "val", "test"))
    print(f"\n{name}: {len(facts['labels'])} classes; {sizes}; published: {PUBLISHED[name]}")
    print(f"{'system':<10} {'accuracy':>8} {'macro-F1':>8} {'train/s':>9} {'predict/s':>9} {'seconds':>8}  notes")
    for system, row in rows.items():
        if "accuracy" not in row:
            print(f"{system:<10} {'-':>8} {'-':>8} {'-':>9} {'-':>9} {'-':>8}  {row['skipped']}")
            continue
        seconds = f"{row.get('total_s', row['train_s']):.0f}"
        note = f"LM {row['lm_s']:.0f} s + classifier {row['train_s']:.0f} s" if row.get("lm_s") else ""
        throughput = f"{row['train_texts_per_s']:9,.0f}" if row.get("train_texts_per_s") else f"{'?':>9}"
        print(f"{system:<10} {row['accuracy']:8.2%} {row['macro_f1']:8.3f} {throughput} "
              f"{row['predict_texts_per_s']:9,.0f} {seconds:>8}  {note}")  # fmt: skip
    for t in targets:
        print(f"  target {t['target']}: {t['charlm_system']} by {t['gap']:+.2%} -> {'met' if t['met'] else 'NOT met'}")


def main() -> int:
    parser = common.parser(__doc__, "classify")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.set_defaults(json=REPO / "bench" / "results" / "classify" / f"{stamp}.json")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    parser.add_argument("--budget", type=float, default=300, help="charlm classifier's --max-time, and the textbook's")
    parser.add_argument("--lm-budget", type=float, help="the language model's --max-time (default: --budget)")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed and every system's")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="charlm's")
    parser.add_argument("--work", type=Path, help="keep the split files and run directories here")
    parser.add_argument("extra", nargs="*", help="more `charlm classify train` options (after --)")
    args = parser.parse_args()
    tasks, systems = [t for t in args.tasks.split(",") if t], [s for s in args.systems.split(",") if s]
    if unknown := [t for t in tasks if t not in TASKS] + [s for s in systems if s not in SYSTEMS]:
        parser.error(f"unknown {', '.join(unknown)}; tasks: {', '.join(TASKS)}; systems: {', '.join(SYSTEMS)}")
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent: the shared labelled data sets sit beside the checkout")
    args.lm_budget = args.budget if args.lm_budget is None else args.lm_budget
    torch.set_num_threads(args.threads)
    header = budget_report.machine()
    print(f"CPU {header['cpu']} ({header['cores']} cores; {' '.join(header['cpu_flags']) or 'none'} of "
          f"{', '.join(budget_report.FLAGS)}); torch {header['torch']}; {header['date']}")  # fmt: skip
    print(f"budget {args.budget:g} s (LM {args.lm_budget:g} s), seed {args.seed}, precision {args.precision} "
          f"(charlm; the baselines fp32), {args.threads} threads; extra: {' '.join(args.extra) or 'none'}")  # fmt: skip
    result = {"machine": header, "budget_s": args.budget, "lm_budget_s": args.lm_budget, "seed": args.seed,
              "precision": args.precision, "baseline_precision": "fp32", "threads": args.threads, "extra": args.extra,
              "tfidf_grid": baselines.TFIDF_GRID, "tasks": {}}  # fmt: skip
    work = args.work or Path(tempfile.mkdtemp(prefix="classify-bench-"))
    env = {**os.environ, "CHARLM_CACHE_DIR": str(work / "cache")}
    try:
        for name in tasks:
            splits = load_task(name, args.seed)
            folder = work / name
            facts = write_splits(folder, splits)
            ids = {label: i for i, label in enumerate(splits.labels)}
            truth = [ids[label] for label in splits.test.labels]
            rows = {}
            for system in systems:
                with budget_report.Contention() as contention:
                    if system in ("charlm", "charlm-lm"):
                        row = run_charlm(folder, splits, args, env, from_lm=system == "charlm-lm")
                    elif system == "textbook":
                        row = baselines.run_textbook(splits, ids, args.budget, args.seed)
                    elif missing := baselines.sklearn_missing():
                        row = {"skipped": missing}
                    else:
                        row = baselines.run_tfidf(splits, ids, args.seed)
                if "predicted" in row:
                    report = class_report(truth, row.pop("predicted"), splits.labels).to_dict()
                    row.update(accuracy=report["accuracy"], macro_f1=report["macro_f1"], report=report)
                    if "evaluate" in row and abs(row["evaluate"]["accuracy"] - report["accuracy"]) > 1e-9:
                        print(f"warning: {name} {system}: charlm classify evaluate says accuracy "
                              f"{row['evaluate']['accuracy']:.4f}, Classifier.predict {report['accuracy']:.4f}")  # fmt: skip
                rows[system] = {**row, "other_cores": contention.cores}
            targets = judge(name, rows)
            print_task(name, facts, rows, targets)
            result["tasks"][name] = {**facts, "published": PUBLISHED[name], "rows": rows, "targets": targets}
            common.write_result(args.json, result)  # after each task: a long session keeps what it measured
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
