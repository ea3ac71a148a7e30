"""Evaluation benchmark: tokens per second scoring 1 MB of text with a 2x512 LSTM.

charlm's score_tokens (gathering windows from the token array, carried state, summed NLL)
at several lane counts and precisions, against the bare forward pass over the same (B, T)
windows prepared in advance, measured in the same run: the ratio is charlm's overhead.

    python bench/eval_speed.py [--threads 2] [--json bench/results/eval_speed.json]
"""

from __future__ import annotations

import sys
import time

import common
import numpy as np
import torch
from common import SHAKESPEARE as SHARED

from charlm.config import ModelConfig
from charlm.hardware import autocast, cpu_supports_bf16
from charlm.inference.scoring import DEFAULT_WINDOW, score_tokens
from charlm.models import state as states
from charlm.models.rnnlm import RNNLM


def corpus_ids(megabytes: float) -> np.ndarray:
    if SHARED.is_file():
        text = SHARED.read_bytes()
    else:
        text = bytes(range(32, 127)) * 20000
    size = int(megabytes * 1_000_000)
    data = (text * (size // len(text) + 1))[:size]
    values, ids = np.unique(np.frombuffer(data, dtype=np.uint8), return_inverse=True)
    return ids.astype(np.uint8), len(values)


def bare_forward(model: RNNLM, ids: np.ndarray, lanes: int, precision: str) -> float:
    span = len(ids) // lanes
    x_all = torch.from_numpy(ids[: lanes * span].astype(np.int64)).view(lanes, span)
    windows = [x_all[:, i : i + DEFAULT_WINDOW].contiguous() for i in range(0, span, DEFAULT_WINDOW)]
    with torch.no_grad():
        state = None
        started = time.perf_counter()
        for x in windows:
            with autocast(torch.device("cpu"), precision):
                _, state = model(x, state)
            state = states.detach(state)
        return time.perf_counter() - started


def main() -> int:
    parser = common.parser(__doc__, "eval_speed")
    parser.add_argument("--megabytes", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids, vocab = corpus_ids(args.megabytes)
    model = RNNLM(ModelConfig(vocab_size=vocab, layers=2, hidden=512, embed=128)).eval()

    precisions = ["fp32"] + (["bf16"] if cpu_supports_bf16() else [])
    rows = []
    for precision in precisions:
        for lanes in (1, 16, 64):
            started = time.perf_counter()
            score = score_tokens(model, ids, 0, lanes=lanes, precision=precision)
            ours = time.perf_counter() - started
            bare = bare_forward(model, ids, lanes, precision)
            rows.append(
                {
                    "precision": precision,
                    "lanes": lanes,
                    "tokens": score.tokens,
                    "charlm_tokens_per_s": round(score.tokens / ours),
                    "bare_tokens_per_s": round(len(ids) / bare),
                    "overhead": round(ours / bare, 2),
                    "loss": score.loss,
                }
            )
    print(f"2x512 LSTM, {len(ids):,} tokens (vocabulary {vocab}), {args.threads} threads, windows of {DEFAULT_WINDOW}")
    print(f"{'precision':<9} {'lanes':>5} {'charlm tok/s':>13} {'bare forward tok/s':>19} {'time ratio':>10}")
    for r in rows:
        print(
            f"{r['precision']:<9} {r['lanes']:>5} {r['charlm_tokens_per_s']:>13,} {r['bare_tokens_per_s']:>19,} "
            f"{r['overhead']:>9.2f}x"
        )
    if len(precisions) > 1:
        by = {(r["precision"], r["lanes"]): r["loss"] for r in rows}
        drift = max(abs(by[("bf16", n)] - by[("fp32", n)]) for n in (1, 16, 64))
        print(f"largest |bf16 - fp32| loss difference: {drift:.2e} nats/token")
    common.write_result(args.json, {"threads": args.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
