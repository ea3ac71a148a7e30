"""What bench/quality_budget.py reads out of its runs and prints: the figures, not the running.

  machine()            the header facts: CPU model and the flags that matter, torch, date
  charlm_figures()     a charlm run's row from its metrics.jsonl and config.json: size, steps,
                       the closing validation in nats/char, the eval curve, and where the
                       budget went (start-up, probe, validation passes, checkpoints, steps)
  reach_time()         when an eval curve first got down to a given loss
  judge()              the targets of issue 14 for one corpus: charlm against nanoGPT at the
                       same budget, and the absolute ones on tiny Shakespeare in bf16
  print_corpus()       one table per corpus, then the budget, reach, shape and target lines

Every loss here is nats per character (bits per char x ln 2 for a tokenizer that is not char).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from datetime import datetime
from typing import Optional

import torch

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
VS_NANOGPT = {"shakespeare": -0.20}  # charlm - nanoGPT at the same budget, at most this
VS_NANOGPT_OTHER = -0.10
ABSOLUTE_BF16 = {"shakespeare": {300: 1.42, 600: 1.40}}  # below these, in bf16


def machine() -> dict:
    """CPU model name and its relevant flags, core count, torch version, the date."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_flags": [f for f in FLAGS if f in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.now().isoformat(timespec="seconds"),
    }


class Contention:
    """Cores other processes kept busy while a run ran: /proc/stat's busy time less this
    process's and its children's CPU time (None off Linux). Above about 0.1 the run shared
    the machine and its figures at a fixed budget are not representative."""

    def __enter__(self) -> "Contention":
        self.before, self.cores = self._snapshot(), None
        return self

    def __exit__(self, *exc) -> None:
        after = self._snapshot()
        if self.before and after and after[0] > self.before[0]:
            other = (after[1] - self.before[1]) - (after[2] - self.before[2])
            self.cores = round(max(0.0, other / (after[0] - self.before[0])), 3)

    @staticmethod
    def _snapshot() -> Optional[tuple[float, float, float]]:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:8]]  # user nice system idle iowait irq softirq
        except (OSError, ValueError):
            return None
        t = os.times()
        busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")
        return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def nats_per_char(event: dict) -> float:
    return event["bpc"] * math.log(2)


def charlm_figures(events: list[dict], config: dict, launched: float, budget: float) -> dict:
    """A charlm row from a finished run; `launched`: time.time() just before the process started."""
    start = next(e for e in events if e["event"] == "start")
    end = next(e for e in events if e["event"] == "end")
    evals = [e for e in events if e["event"] == "eval"]
    closing = evals[-1]
    step_tokens = config["train"]["batch_size"] * config["train"]["seq_len"]
    model = config["model"]
    return {
        "parameters": start["parameters"],
        "precision": start["precision"],
        "model": model,
        "shape": f"{model['layers']}x{model['hidden']}",
        "batch_size": config["train"]["batch_size"],
        "seq_len": config["train"]["seq_len"],
        "lr": config["train"]["lr"],
        "auto_size": config["train"].get("auto_size"),
        "budget_choice": (config.get("extra") or {}).get("budget"),
        "steps": end["step"],
        "tokens": end["step"] * step_tokens,
        "elapsed_s": end["elapsed"],
        "val_nats": nats_per_char(closing),
        "val_loss_per_token": closing["loss"],
        "val_scored_tokens": closing["tokens"],
        "val_tokens": start.get("val_tokens"),
        "curve": [
            {"step": e["step"], "elapsed_s": e["elapsed"], "val_nats": nats_per_char(e), "complete": e.get("complete")}
            for e in evals
        ],
        "accounting": accounting(events, config, launched, budget, step_tokens),
    }


def accounting(events: list[dict], config: dict, launched: float, budget: float, step_tokens: int) -> dict:
    """Where the budget went. The training phase runs from the clock's start to the closing
    validation (which, with its checkpoint, comes after the budget). Step time is summed from
    the train events' tokens_per_s, which time the steps alone; validation passes from their
    eval events' seconds; checkpoints from their events' seconds where present, else as the
    residual of the training phase."""
    end = next(e for e in events if e["event"] == "end")
    evals = [e for e in events if e["event"] == "eval"]
    closing = evals[-1]
    probe_s = ((config.get("extra") or {}).get("budget") or {}).get("probe_seconds")
    # the probe runs before the clock starts and its seconds start the clock's count; the end
    # event is written right after the clock's last tick
    clock_start = end["time"] - (end["elapsed"] - (probe_s or 0.0))
    phase = closing["elapsed"]
    periodic = evals[:-1]
    evals_s = sum(e.get("seconds", 0.0) for e in periodic)
    trains = [e for e in events if e["event"] == "train" and e.get("tokens_per_s")]
    steps_s = None
    if trains:
        rates = [e["tokens_per_s"] for e in trains]
        steady = statistics.median(rates[1:] if len(rates) > 1 else rates)
        steps_s, previous = 0.0, 0
        for e in trains:
            steps_s += (e["step"] - previous) * step_tokens / e["tokens_per_s"]
            previous = e["step"]
        steps_s += (closing["step"] - previous) * step_tokens / steady
    elif closing["step"] == 0:
        steps_s = 0.0
    saves = [
        e for e in events if e["event"] == "checkpoint" and e["time"] <= closing["time"] and e["time"] > clock_start
    ]
    if not saves:
        checkpoints_s, method = 0.0, "none during the budget"
    elif all("seconds" in e for e in saves):
        checkpoints_s, method = sum(e["seconds"] for e in saves), "checkpoint events' seconds"
    elif steps_s is not None:
        checkpoints_s = max(0.0, phase - steps_s - evals_s - (probe_s or 0.0))
        method = "residual: training phase less probe, step time (train events' tokens_per_s) and validation seconds"
    else:
        checkpoints_s, method = None, "not measurable: no train event (raise the budget or lower --log-every)"
    return {
        "time_to_first_step_s": round(clock_start - launched, 2),
        "probe_s": probe_s,
        "training_phase_s": phase,
        "steps_s": None if steps_s is None else round(steps_s, 2),
        "validation_passes": len(periodic),
        "validation_s": round(evals_s, 2),
        "checkpoints": len(saves),
        "checkpoints_s": None if checkpoints_s is None else round(checkpoints_s, 2),
        "checkpoints_method": method,
        "non_step_share": None if steps_s is None else round(max(0.0, phase - steps_s) / budget, 4),
        "closing_validation_s": closing.get("seconds"),
        "after_budget_s": round(end["elapsed"] - phase, 2),
        "notes": "time_to_first_step_s: process start to the first step (imports, corpus from the warmed cache, "
        "the probe, the model, the step-0 checkpoint); training_phase_s: budget seconds used before the closing "
        "validation, the probe's included; non_step_share: (training phase less step time) / budget",
    }


def reach_time(curve: list[dict], loss: float) -> Optional[dict]:
    """The first eval at or below `loss`: its elapsed seconds and whether it scored the whole split."""
    for point in curve:
        if point["val_nats"] <= loss:
            return {"elapsed_s": point["elapsed_s"], "step": point["step"], "complete": point["complete"]}
    return None


def judge(corpus: str, rows: list[dict]) -> list[dict]:
    """The targets for the default charlm rows of one corpus, met or not."""
    nanogpt = {r["budget_s"]: r["val_nats"] for r in rows if r["who"] == "nanoGPT"}
    margin = VS_NANOGPT.get(corpus, VS_NANOGPT_OTHER)
    targets = []
    for row in (r for r in rows if r["who"] == "charlm" and r["shape_option"] is None):
        budget = row["budget_s"]
        if budget in nanogpt:
            diff = row["val_nats"] - nanogpt[budget]
            targets.append(
                {"budget_s": budget, "what": f"charlm - nanoGPT <= {margin:+.2f}", "value": diff, "met": diff <= margin}
            )
        limit = ABSOLUTE_BF16.get(corpus, {}).get(int(budget))
        if limit is not None and row["precision"] == "bf16":
            targets.append(
                {
                    "budget_s": budget,
                    "what": f"val nats/char < {limit} (bf16)",
                    "value": row["val_nats"],
                    "met": row["val_nats"] < limit,
                }
            )
    return targets


def shape_gaps(rows: list[dict]) -> list[dict]:
    """At each budget, the default row's loss less the best fixed shape's."""
    gaps = []
    for auto in (r for r in rows if r["who"] == "charlm" and r["shape_option"] is None):
        fixed = [r for r in rows if r["who"] == "charlm" and r["shape_option"] and r["budget_s"] == auto["budget_s"]]
        if fixed:
            best = min(fixed, key=lambda r: r["val_nats"])
            gaps.append(
                {
                    "budget_s": auto["budget_s"],
                    "auto_shape": auto["shape"],
                    "best_shape": best["shape_option"],
                    "auto_minus_best": auto["val_nats"] - best["val_nats"],
                }
            )
    return gaps


def analyse(corpus: str, rows: list[dict]) -> dict:
    """Targets, shape gaps, and how soon each charlm run reached nanoGPT's largest-budget loss."""
    nanogpt = [r for r in rows if r["who"] == "nanoGPT"]
    report = {"targets": judge(corpus, rows), "shape_gaps": shape_gaps(rows), "reach_target": None, "reach": []}
    if nanogpt:
        anchor = max(nanogpt, key=lambda r: r["budget_s"])
        report["reach_target"] = {"budget_s": anchor["budget_s"], "val_nats": anchor["val_nats"]}
        for row in (r for r in rows if r["who"] == "charlm"):
            at = reach_time(row["curve"], anchor["val_nats"])
            report["reach"].append({"who": label(row), "budget_s": row["budget_s"], "at": at})
    return report


def label(row: dict) -> str:
    if row["who"] != "charlm":
        return row["who"]
    return f"charlm {row['shape_option']}" if row["shape_option"] else "charlm auto"


def reached(at: Optional[dict]) -> str:
    if at is None:
        return "not reached"
    return f"{at['elapsed_s']:.0f}s (step {at['step']:,}, {'whole split' if at['complete'] else 'sample'} eval)"


def budget_line(row: dict) -> str:
    """Where one charlm run's budget went, in one line."""
    a, choice = row["accounting"], row["budget_choice"]
    chose = ""
    if row["auto_size"] and not row["shape_option"]:
        chose = f" (chosen by charlm{': ' + choice['reason'] if choice and choice.get('reason') else ''})"
    checkpoints = "?" if a["checkpoints_s"] is None else f"{a['checkpoints_s']:.1f}s"
    share = "?" if a["non_step_share"] is None else f"{a['non_step_share']:.1%}"
    probe = "" if a["probe_s"] is None else f", probe {a['probe_s']:.1f}s"
    return (
        f"  {label(row)} {row['budget_s']:g}s: {row['shape']}{chose}; first step after "
        f"{a['time_to_first_step_s']:.1f}s{probe}; {a['validation_passes']} validation passes {a['validation_s']:.1f}s; "
        f"{a['checkpoints']} checkpoints {checkpoints} ({a['checkpoints_method'].split(':')[0]}); "
        f"not steps: {share} of the budget"
    )


def print_corpus(name: str, facts: dict, rows: list[dict], report: dict) -> None:
    """The table for one corpus and the lines under it."""
    split = facts["split"]
    print(
        f"\n== {name}: {facts['file']}, {split['chars']:,} chars; val: charlm {split['charlm_val_chars']:,} chars, "
        f"nanoGPT {split['nanogpt_val_chars']:,} (scores {split['nanogpt_scored_chars']:,}) =="
    )
    nanogpt = {r["budget_s"]: r["val_nats"] for r in rows if r["who"] == "nanoGPT"}
    vs = {t["budget_s"]: t for t in report["targets"] if t["what"].startswith("charlm - nanoGPT")}
    print(
        f"{'who':<14} {'budget':>7} {'params':>10} {'steps':>7} {'tokens':>11} {'nats/char':>9} {'-nanoGPT':>9} "
        f"{'target':>7} {'met':>4}"
    )
    for row in rows:
        diff, target, met = "", "", ""
        if row["who"] == "charlm" and row["budget_s"] in nanogpt:
            diff = f"{row['val_nats'] - nanogpt[row['budget_s']]:+.4f}"
        if row["who"] == "charlm" and not row["shape_option"] and row["budget_s"] in vs:
            target = vs[row["budget_s"]]["what"].split()[-1]
            met = "yes" if vs[row["budget_s"]]["met"] else "no"
        print(
            f"{label(row):<14} {row['budget_s']:>6g}s {row['parameters']:>10,} {row['steps']:>7,} "
            f"{row['tokens']:>11,} {row['val_nats']:>9.4f} {diff:>9} {target:>7} {met:>4}",
            flush=True,
        )
    for row in (r for r in rows if r["who"] == "charlm"):
        print(budget_line(row))
    if report["reach_target"]:
        anchor = report["reach_target"]
        print(f"  time to nanoGPT's {anchor['budget_s']:g}s loss {anchor['val_nats']:.4f}:")
        for r in report["reach"]:
            print(f"    {r['who']} {r['budget_s']:g}s: {reached(r['at'])}")
    if busy := [f"{label(r)} {r['budget_s']:g}s" for r in rows if (r.get("other_cores") or 0) > 0.1]:
        print(
            f"  warning: other processes shared the CPU during {', '.join(busy)}: those figures are not representative"
        )
    for gap in report["shape_gaps"]:
        print(
            f"  {gap['budget_s']:g}s: auto ({gap['auto_shape']}) - best fixed shape ({gap['best_shape']}) = "
            f"{gap['auto_minus_best']:+.4f}"
        )
    for t in report["targets"]:
        print(f"  target {t['budget_s']:g}s {t['what']}: {t['value']:+.4f}, {'met' if t['met'] else 'NOT met'}")
