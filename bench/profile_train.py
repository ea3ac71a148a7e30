"""Where a training step's time goes: torch.profiler over real Trainer steps.

Trains the recommended CPU model (every model and batch option at its default) on tiny
Shakespeare, or on generated text without ../shared, for --warmup untimed steps and then
--steps profiled ones, and prints the operators that take the most self CPU time, grouped
into forward recurrence, backward recurrence, optimizer and the rest. The table says what
to optimise; the JSON keeps the top operators.

    python bench/profile_train.py [--threads 2] [--steps 20] [--json bench/results/profile_train.json]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import common
import torch
from torch.profiler import ProfilerActivity, profile

from charlm.config import ModelConfig, TrainConfig
from charlm.hardware import resolve_precision
from charlm.tasks.language_model import Trainer
from charlm.text.corpus import prepare_corpus


def group_of(name: str) -> str:
    lowered = name.lower()
    if "adamw" in lowered or "_fused_adam" in lowered or "foreach" in lowered or "clip" in lowered or "norm" in lowered:
        return "optimizer and clipping"
    if "backward" in lowered or "grad" in lowered:
        return "backward"
    if "lstm" in lowered or "gru" in lowered or "rnn" in lowered or "mkldnn" in lowered:
        return "recurrence (forward)"
    if "cross_entropy" in lowered or "log_softmax" in lowered or "nll" in lowered:
        return "loss"
    return "other"


def main() -> int:
    parser = common.parser(__doc__, "profile_train")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        source = common.training_text(Path(tmp))
        corpus = prepare_corpus(str(source), cache_root=Path(tmp) / "cache", threads=args.threads)
        model_config = ModelConfig(vocab_size=corpus.tokenizer.vocab_size)
        device = torch.device("cpu")
        precision = resolve_precision("auto", device)
        total = args.warmup + args.steps
        train_config = TrainConfig(max_steps=total, eval_every=10**9, checkpoint_every=10**9, log_every=total)
        run = common.new_run(Path(tmp) / "run", corpus, model_config, train_config)
        trainer = Trainer(model_config, train_config, corpus, run, device, precision)
        trainer.val_tokens = trainer.val_tokens[:0]  # keep the closing validation pass out of the profile
        trainer.max_steps = args.warmup
        trainer.run()
        trainer.max_steps = total
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.run()

    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    whole = sum(e.self_cpu_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    shape = (
        f"{model_config.layers}x{model_config.hidden} {model_config.cell}, embed {model_config.embed}, "
        f"B={train_config.batch_size}, T={train_config.seq_len}, {precision}, {args.threads} threads"
    )
    print(f"profile of {args.steps} Trainer steps (and the closing checkpoint): {shape}")
    print(f"{'group':<26} {'share':>6}")
    for name, spent in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{name:<26} {spent / whole:>6.1%}")
    print(f"\n{'operator':<48} {'calls':>7} {'self ms':>9} {'share':>6}")
    for e in top:
        print(
            f"{e.key[:48]:<48} {e.count:>7} {e.self_cpu_time_total / 1000:>9.1f} {e.self_cpu_time_total / whole:>6.1%}"
        )
    result = {
        "shape": shape,
        "steps": args.steps,
        "groups": {k: round(v / whole, 4) for k, v in groups.items()},
        "top": [
            {
                "op": e.key,
                "calls": e.count,
                "self_ms": round(e.self_cpu_time_total / 1000, 2),
                "share": round(e.self_cpu_time_total / whole, 4),
            }
            for e in top
        ],
    }
    common.write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
