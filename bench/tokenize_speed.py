"""Tokenizer speed and big-corpus behaviour: encode MB/s, time to first step, peak memory.

Part 1, in this process: each tokenizer (char, byte, sentencepiece unigram 2000) encodes the
same text, cut into the 4 MiB newline-aligned chunks the corpus module uses. Baselines in the
same run: decoding the UTF-8 bytes into a str (work every tokenizer path does anyway), and for
sentencepiece the library's own encode over the same chunks without charlm's exact
round-trip handling. MB means 10^6 bytes of UTF-8 input.

Part 2, in subprocesses: `charlm train` on a corpus of --train-megabytes (default 200) made
by repeating tiny Shakespeare: once cold (the corpus is counted, split, fitted and encoded
into the cache) and once cached. For each it reports the seconds from launching the command
to the end of the first training step, and the peak resident memory (VmHWM, which counts
the touched pages of the memory-mapped token file too) and peak anonymous memory (RssAnon,
without page cache) of the whole process, polled every 20 ms; a process that only imports
charlm gives the floor. The cached run trains --train-steps steps, so its peak covers the
training loop walking through the corpus.

    python bench/tokenize_speed.py [--encode-megabytes 64] [--train-megabytes 200] [--json ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import common
from common import REPO, SHAKESPEARE


def sample_unit() -> bytes:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_bytes()
    # a fresh clone without ../shared: the Python standard library's source is text enough
    return b"".join(p.read_bytes() for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))


def write_corpus(path: Path, megabytes: int) -> int:
    unit = sample_unit()
    with open(path, "wb") as f:
        for _ in range(max(1, megabytes * 10**6 // len(unit))):
            f.write(unit)
    return path.stat().st_size


def best_rate(work, nbytes: int, repeats: int = 3) -> float:
    """MB/s of the fastest of `repeats` calls of work()."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return nbytes / best / 1e6


def encode_speeds(megabytes: int, threads: int) -> list[dict]:
    from charlm.text.sources import newline_chunks
    from charlm.text.tokenizer import build_tokenizer

    raw = sample_unit() * max(1, megabytes * 10**6 // len(sample_unit()))
    nbytes = len(raw)
    text = raw.decode("utf-8")
    block = 4 << 20
    chunks = list(newline_chunks(text[i : i + block] for i in range(0, len(text), block)))
    raw_blocks = [raw[i : i + block] for i in range(0, nbytes, block)]

    rows = [
        {
            "what": "UTF-8 decode (baseline)",
            "mb_per_s": best_rate(lambda: [b.decode("utf-8", "replace") for b in raw_blocks], nbytes),
        }
    ]
    for kind in ("char", "byte", "sentencepiece"):
        started = time.perf_counter()
        tok = build_tokenizer(kind, lambda: iter(chunks), vocab_size=2000, threads=threads)
        fit_s = time.perf_counter() - started
        repeats = 1 if kind == "sentencepiece" else 3
        rate = best_rate(lambda tok=tok: [tok.encode(c) for c in chunks], nbytes, repeats)
        rows.append({"what": f"charlm {kind}", "mb_per_s": rate, "fit_s": round(fit_s, 2)})
        if kind == "sentencepiece":
            sp = tok._sp  # the library itself, same model, same chunks, no exact round-trip handling
            rows.append(
                {
                    "what": "sentencepiece library encode (baseline)",
                    "mb_per_s": best_rate(lambda sp=sp: [sp.encode(c) for c in chunks], nbytes, 1),
                }
            )
    floor = rows[0]["mb_per_s"]
    for row in rows:
        row["mb_per_s"] = round(row["mb_per_s"], 1)
        row["vs_decode"] = round(row["mb_per_s"] / floor, 3)
    return rows


def watch(command: list[str], env: dict, metrics: Path) -> dict:
    """Run command; return seconds to the first train event and the peak memory figures."""
    launched = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hwm = anon = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
                elif line.startswith("RssAnon:"):
                    anon = max(anon, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    stderr = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr}")
    first_step = None
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "train":
                first_step = round(event["time"] - launched, 2)
                break
    return {
        "seconds_to_first_step": first_step,
        "wall_s": round(time.time() - launched, 1),
        "peak_rss_mib": hwm // 1024,
        "peak_anon_mib": anon // 1024,
    }


def big_corpus_runs(megabytes: int, steps: int, threads: int) -> tuple[int, list[dict]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "big.txt"
        size = write_corpus(corpus, megabytes)
        env = {**os.environ, "CHARLM_DATA_DIR": str(Path(tmp) / "data")}
        floor = watch([sys.executable, "-c", "import charlm.cli, time; time.sleep(0.5)"], env, Path(tmp) / "none")
        rows.append({"run": "import charlm only", **floor})
        # a tiny validation split: scoring 10% of 200 MB would dwarf the training measured here
        common = [
            "--data",
            str(corpus),
            "--val-fraction",
            "0.001",
            "--log-every",
            "1",
            "--eval-every",
            "1000000",
            "--checkpoint-every",
            "1000000",
            "--sample-length",
            "0",
            "--threads",
            str(threads),
        ]
        for label, limit in (("cold: prepare + 1 step", 1), (f"cached: {steps} steps", steps)):
            out = Path(tmp) / f"run-{limit}"
            command = [sys.executable, "-m", "charlm", "train", *common, "--max-steps", str(limit), "--out", str(out)]
            rows.append({"run": label, **watch(command, env, out / "metrics.jsonl")})
    return size, rows


def main() -> int:
    parser = common.parser(__doc__, "tokenize_speed")
    parser.add_argument("--encode-megabytes", type=int, default=64)
    parser.add_argument("--train-megabytes", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=300)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    encode = encode_speeds(args.encode_megabytes, args.threads)
    print(f"encoding {args.encode_megabytes} MB of text in 4 MiB chunks, {args.threads} threads")
    print(f"{'what':<42} {'MB/s':>8} {'vs decode':>10}")
    for row in encode:
        print(f"{row['what']:<42} {row['mb_per_s']:>8,.1f} {row['vs_decode']:>9.2f}x")

    size, runs = big_corpus_runs(args.train_megabytes, args.train_steps, args.threads)
    print(f"\ncharlm train (char, default model) on a {size / 1e6:,.0f} MB corpus")
    print(f"{'run':<26} {'to first step s':>16} {'wall s':>7} {'peak RSS MiB':>13} {'peak anon MiB':>14}")
    for row in runs:
        first = "" if row["seconds_to_first_step"] is None else f"{row['seconds_to_first_step']:.1f}"
        print(
            f"{row['run']:<26} {first:>16} {row['wall_s']:>7.1f} {row['peak_rss_mib']:>13,} {row['peak_anon_mib']:>14,}"
        )

    result = {
        "threads": args.threads,
        "encode_megabytes": args.encode_megabytes,
        "encode": encode,
        "train_corpus_bytes": size,
        "train_runs": runs,
    }
    common.write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
