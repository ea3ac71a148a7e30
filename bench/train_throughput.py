"""Training throughput: charlm's Trainer against a bare PyTorch loop, in the same run.

For each cell (LSTM, GRU), size (2x256, 2x512) and precision (fp32, bf16 autocast) it times
the same model shape two ways on the same tokens:

- bare: Embedding -> nn.LSTM/GRU -> Linear, AdamW, cross-entropy, carried state detached
  between windows: the loop people write first;
- charlm: the real Trainer (learning-rate schedule, gradient clipping, loss bookkeeping,
  metrics file, batcher over a memory-mapped corpus), with validation and checkpoints out of
  the timed window.

The two alternate in rounds and each keeps its best round, so a burst of noise on a shared
machine hits both. Achieved GFLOP/s counts 6 FLOPs per non-embedding parameter per token
(forward 2, backward 4) and is shown as a fraction of a matmul peak measured in the same run.

    python bench/train_throughput.py [--threads 2] [--batch 64] [--seq-len 128] [--json ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import common
import torch
import torch.nn.functional as F
from torch import nn

from charlm.config import ModelConfig, TrainConfig
from charlm.hardware import autocast, cpu_supports_bf16
from charlm.tasks.language_model import Trainer
from charlm.text.corpus import prepare_corpus


def matmul_peak(dtype: torch.dtype, seconds: float = 1.0) -> float:
    """GFLOP/s of a 512x512 @ 512x2048 matmul, the shape of an LSTM layer's gate product."""
    a = torch.randn(512, 512).to(dtype)
    b = torch.randn(512, 2048).to(dtype)
    for _ in range(5):
        torch.mm(a, b)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * 512 * 512 * 2048 * count / (time.perf_counter() - started) / 1e9


class BareLM(nn.Module):
    def __init__(self, cell: str, vocab: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state):
        out, state = self.rnn(self.embedding(x), state)
        return self.head(out), state


def bare_round(
    tokens: torch.Tensor,
    cell: str,
    vocab: int,
    size: int,
    layers: int,
    precision: str,
    batch: int,
    seq_len: int,
    warmup: int,
    steps: int,
) -> float:
    """Tokens per second of the bare loop over `steps` windows after `warmup` untimed ones."""
    torch.manual_seed(0)
    model = BareLM(cell, vocab, size, size, layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lanes = tokens[: (len(tokens) // batch) * batch].view(batch, -1)  # (B, N/B)
    device = torch.device("cpu")
    state = None
    started = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            started = time.perf_counter()
        start = (i * seq_len) % (lanes.size(1) - seq_len - 1)
        x = lanes[:, start : start + seq_len].long()
        y = lanes[:, start + 1 : start + seq_len + 1].long()
        with autocast(device, precision):
            logits, state = model(x, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
    return steps * batch * seq_len / (time.perf_counter() - started)


def charlm_round(
    corpus, cell: str, size: int, layers: int, precision: str, batch: int, seq_len: int, warmup: int, steps: int
) -> float:
    """Tokens per second of charlm's Trainer between the end of step `warmup` and of the last step."""
    marks: dict[int, float] = {}

    def on_event(event):
        if event["event"] == "train":
            marks[event["step"]] = time.perf_counter()

    # the bare model has no dropout, so neither does this one (the recommended 0.1 is not free)
    # the bare model has no dropout, so neither does this one (the recommended 0.1 has a cost)
    model_config = ModelConfig(
        vocab_size=corpus.tokenizer.vocab_size, cell=cell, layers=layers, hidden=size, embed=size, dropout=0.0
    )
    train_config = TrainConfig(
        batch_size=batch,
        seq_len=seq_len,
        max_steps=warmup + steps,
        precision=precision,
        device="cpu",
        log_every=1,
        eval_every=10**9,
        checkpoint_every=10**9,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = common.new_run(Path(tmp) / "run", corpus, model_config, train_config)
        Trainer(model_config, train_config, corpus, run, torch.device("cpu"), precision, on_event=on_event).run()
    return steps * batch * seq_len / (marks[warmup + steps] - marks[warmup])


def main() -> int:
    parser = common.parser(__doc__, "train_throughput")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds; the best of each is kept")
    parser.add_argument("--seconds", type=float, default=6.0, help="rough length of one timed round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    precisions = args.precisions.split(",")
    if "bf16" in precisions and not cpu_supports_bf16():
        print("note: this CPU has no native bf16; bf16 rows run emulated and slow")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}

    with tempfile.TemporaryDirectory() as tmp:
        source = common.training_text(Path(tmp))
        corpus = prepare_corpus(str(source), cache_root=Path(tmp) / "cache", threads=args.threads)
        tokens = torch.from_numpy(corpus.splits["train"].astype("int64"))
        vocab = corpus.tokenizer.vocab_size

        rows = []
        print(
            f"matmul peak 512x512 @ 512x2048: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
            f"B={args.batch}, T={args.seq_len}, {args.threads} threads"
        )
        header = (
            f"{'cell':<5} {'size':>6} {'prec':<5} {'bare tok/s':>11} {'charlm tok/s':>13} {'ratio':>6} "
            f"{'GFLOP/s':>8} {'of peak':>8}"
        )
        print(header)
        for cell in args.cells.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for precision in precisions:
                    probe = BareLM(cell, vocab, size, size, args.layers)
                    flops_per_token = 6 * (sum(p.numel() for p in probe.parameters()) - probe.embedding.weight.numel())
                    # size the round from a quick probe so every row takes about --seconds
                    rate = bare_round(tokens, cell, vocab, size, args.layers, precision, args.batch, args.seq_len, 1, 2)
                    steps = max(3, int(args.seconds * rate / (args.batch * args.seq_len)))
                    warmup = 2
                    bare, ours = [], []
                    for _ in range(args.rounds):
                        bare.append(
                            bare_round(
                                tokens,
                                cell,
                                vocab,
                                size,
                                args.layers,
                                precision,
                                args.batch,
                                args.seq_len,
                                warmup,
                                steps,
                            )
                        )
                        ours.append(
                            charlm_round(
                                corpus, cell, size, args.layers, precision, args.batch, args.seq_len, warmup, steps
                            )
                        )
                    best_bare, best_ours = max(bare), max(ours)
                    gflops = best_ours * flops_per_token / 1e9
                    row = {
                        "cell": cell,
                        "layers": args.layers,
                        "size": size,
                        "precision": precision,
                        "batch": args.batch,
                        "seq_len": args.seq_len,
                        "steps_per_round": steps,
                        "bare_tokens_per_s": round(best_bare, 1),
                        "charlm_tokens_per_s": round(best_ours, 1),
                        "ratio": round(best_ours / best_bare, 4),
                        "bare_rounds": [round(v, 1) for v in bare],
                        "charlm_rounds": [round(v, 1) for v in ours],
                        "gflops": round(gflops, 1),
                        "fraction_of_peak": round(gflops / peaks[precision], 3),
                    }
                    rows.append(row)
                    print(
                        f"{cell:<5} {args.layers}x{size:<4} {precision:<5} {best_bare:>11,.0f} {best_ours:>13,.0f} "
                        f"{row['ratio']:>5.3f}x {gflops:>8.0f} {row['fraction_of_peak']:>8.0%}",
                        flush=True,
                    )

    result = {
        "threads": args.threads,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
        "rows": rows,
    }
    common.write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
