"""Generation benchmark: tokens per second at batch 1 and batch 32 for a 2x512 LSTM.

charlm's Generator (prompt primed in one pass, then the Stepper's hand-written cell steps,
sampling, UTF-8 decoding and stop handling included), with temperature alone, top-k, top-p
and both, against a bare PyTorch loop measured in the same run: embedding -> nn.LSTM for one
step -> linear -> softmax -> multinomial (temperature only), under inference_mode. The ratio is the figure to watch; absolute numbers move with the machine.

    python bench/generate_speed.py [--threads 2] [--tokens 400] [--json bench/results/generate_speed.json]
"""

from __future__ import annotations

import sys
import time

import common
import torch

from charlm.config import ModelConfig, SampleConfig
from charlm.inference.generate import Generator
from charlm.models.rnnlm import RNNLM
from charlm.text.tokenizer import CharTokenizer

ALPHABET = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's 65


def bare_loop(model: RNNLM, batch: int, tokens: int, seed: int) -> float:
    """Seconds for `tokens` steps of the plain nn.LSTM loop people write first."""
    rng = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        x = torch.zeros(batch, 1, dtype=torch.long)
        state = None
        started = time.perf_counter()
        for _ in range(tokens):
            out, state = model.rnn(model.embedding(x), state)
            probs = torch.softmax(model.head(out[:, -1]) / 0.8, dim=-1)
            x = torch.multinomial(probs, 1, generator=rng)
        return time.perf_counter() - started


SAMPLING = {
    "temperature 0.8": SampleConfig(temperature=0.8),
    "top-k 40": SampleConfig(temperature=0.8, top_k=40),
    "top-p 0.9": SampleConfig(temperature=0.8, top_p=0.9),
    "top-k 40 + top-p 0.9": SampleConfig(temperature=0.8, top_k=40, top_p=0.9),
}


def charlm_loop(generator: Generator, batch: int, tokens: int, seed: int, sampling: SampleConfig) -> float:
    started = time.perf_counter()
    for _ in generator.generate("\n", tokens, num_samples=batch, config=sampling, seed=seed):
        pass
    return time.perf_counter() - started


def main() -> int:
    parser = common.parser(__doc__, "generate_speed")
    parser.add_argument("--tokens", type=int, default=400, help="tokens per sample in each timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tokenizer = CharTokenizer(ord(c) for c in ALPHABET)
    model = RNNLM(ModelConfig(vocab_size=tokenizer.vocab_size, layers=2, hidden=512, embed=128)).eval()
    generator = Generator(model, tokenizer)
    rows = []
    print(f"2x512 LSTM, vocabulary {tokenizer.vocab_size}, {args.threads} threads, {args.tokens} tokens per sample")
    print(f"{'batch':>5} {'charlm sampling':<22} {'bare PyTorch tok/s':>19} {'charlm tok/s':>13} {'speed-up':>9}")
    for batch in (1, 32):
        bare_loop(model, batch, 20, 0)  # warm-up
        bare = min(bare_loop(model, batch, args.tokens, r) for r in range(args.repeats))
        for name, sampling in SAMPLING.items():
            charlm_loop(generator, batch, 20, 0, sampling)
            ours = min(charlm_loop(generator, batch, args.tokens, r, sampling) for r in range(args.repeats))
            row = {
                "batch": batch,
                "sampling": name,
                "bare_tokens_per_s": round(batch * args.tokens / bare, 1),
                "charlm_tokens_per_s": round(batch * args.tokens / ours, 1),
                "speedup": round(bare / ours, 2),
            }
            rows.append(row)
            print(
                f"{batch:>5} {name:<22} {row['bare_tokens_per_s']:>19,.0f} {row['charlm_tokens_per_s']:>13,.0f} "
                f"{row['speedup']:>8.2f}x",
                flush=True,
            )
    common.write_result(args.json, {"threads": args.threads, "tokens": args.tokens, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
