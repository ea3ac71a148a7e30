"""Dynamic evaluation benchmark: a run's loss on a text, static and adapting, and what each costs.

Scores the text once with the run's weights (score_tokens, as `charlm perplexity` does) and then
once per point of a sweep with dynamic evaluation (inference/dynamic.py), every point from the
trained weights, with the same lanes: a table of static and dynamic loss, the gain, and the
seconds each took. The text is --data, or the run's own split (--split); --chars keeps the first
N characters of it (a sweep over a whole split can take long on a CPU).

    python bench/dynamic_eval.py RUN_DIR [--data PATH | --split val] [--chars 50000]
        [--lr 3e-4,1e-3] [--decay 0,1e-3] [--window 32] [--step rms] [--lanes 16] [--threads 2]
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import common
import torch

from charlm.inference.dynamic import (
    DEFAULT_DYNAMIC_DECAY,
    DEFAULT_DYNAMIC_LR,
    DEFAULT_DYNAMIC_STEP,
    DEFAULT_DYNAMIC_WINDOW,
    DynamicSettings,
    score_tokens_dynamic,
)
from charlm.inference.scorer import Scorer


def numbers(kind):
    return lambda text: [kind(value) for value in text.split(",") if value.strip()]


def cpu_facts() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return {"cpu": model, "avx512_bf16": "avx512_bf16" in flags}


def main() -> int:
    parser = common.parser(__doc__, "dynamic_eval")
    parser.add_argument("run", type=Path, help="a run directory")
    parser.add_argument("--data", type=Path, help="the text to score (default: the run's --split)")
    parser.add_argument("--split", choices=["auto", "val", "test"], default="auto")
    parser.add_argument("--chars", type=int, default=0, help="score only the first N characters (0: all)")
    parser.add_argument("--lr", type=numbers(float), default=[DEFAULT_DYNAMIC_LR])
    parser.add_argument("--decay", type=numbers(float), default=[DEFAULT_DYNAMIC_DECAY])
    parser.add_argument("--window", type=numbers(int), default=[DEFAULT_DYNAMIC_WINDOW])
    parser.add_argument("--step", type=numbers(str), default=[DEFAULT_DYNAMIC_STEP])
    parser.add_argument("--lanes", type=int, help="default: the run's validation lanes")
    parser.add_argument("--checkpoint", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scorer = Scorer(args.run, checkpoint=args.checkpoint, lanes=args.lanes)

    if args.data is not None:
        label, text = str(args.data), args.data.read_text(encoding="utf-8")
    else:
        label, (ids, *_) = scorer.encode_split(args.split)
        label, text = f"{label} split", scorer.tokenizer.decode(ids.tolist())
    if args.chars:
        text, label = text[: args.chars], f"{label}, first {args.chars:,} characters"
    ids, *counts = scorer.encode_text(text)

    started = time.perf_counter()
    static = scorer.score_ids(ids, *counts)
    static_s = time.perf_counter() - started
    print(
        f"{args.run}, {label}: {static.tokens:,} tokens, {static.lanes} lanes, {args.threads} threads, "
        f"{scorer.precision}; static loss {static.loss:.4f} nats/token, {static.bits_per_char:.4f} bits/char, "
        f"{static_s:.1f} s"
    )
    print(
        f"{'step':<4} {'window':>6} {'lr':>8} {'decay':>8} {'static loss':>11} {'dynamic loss':>12} "
        f"{'gain':>8} {'dynamic bpc':>11} {'static s':>8} {'dynamic s':>9}"
    )
    rows = []
    for step, window, lr, decay in itertools.product(args.step, args.window, args.lr, args.decay):
        settings = DynamicSettings(lr=lr, decay=decay, window=window, step=step).validate()
        started = time.perf_counter()
        dynamic = score_tokens_dynamic(
            scorer.model, ids, scorer.context_id, settings, scorer.lanes, scorer.device, scorer.precision
        )
        seconds = time.perf_counter() - started
        assert (dynamic.tokens, dynamic.lanes) == (static.tokens, static.lanes)  # the same predictions
        dynamic.chars, dynamic.bytes, dynamic.words, dynamic.unknown = counts
        row = {
            **settings.to_dict(),
            "static_loss": static.loss,
            "dynamic_loss": dynamic.loss,
            "gain_nats_per_token": static.loss - dynamic.loss,
            "static_bits_per_char": static.bits_per_char,
            "dynamic_bits_per_char": dynamic.bits_per_char,
            "static_seconds": round(static_s, 2),
            "dynamic_seconds": round(seconds, 2),
        }
        rows.append(row)
        print(
            f"{step:<4} {window:>6} {lr:>8.2g} {decay:>8.2g} {static.loss:>11.4f} {dynamic.loss:>12.4f} "
            f"{row['gain_nats_per_token']:>+8.4f} {dynamic.bits_per_char:>11.4f} {static_s:>8.1f} {seconds:>9.1f}",
            flush=True,
        )
    facts = {"run": str(args.run), "text": label, "tokens": static.tokens, "lanes": static.lanes}
    common.write_result(args.json, {**facts, "threads": args.threads, **cpu_facts(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
