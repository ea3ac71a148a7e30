"""Memory benchmark: preparing a large corpus stays within bounded memory.

Builds a corpus of --megabytes by repeating tiny Shakespeare (or the pystdlib text when
../shared is absent), then prepares it with each tokenizer in a fresh subprocess and reports
the peak anonymous memory (RSS that is not file-backed page cache) against the same figure
for a process that only imports charlm, measured in the same run.

    python bench/corpus_memory.py [--megabytes 500] [--json bench/results/corpus_memory.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

CHILD = r"""
import json, sys, threading, time
peak = [0]
def watch():
    while True:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('RssAnon'):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
from pathlib import Path
from charlm.corpus import prepare_corpus
time.sleep(0.2)
kind, corpus, cache = sys.argv[1:4]
started = time.perf_counter()
tokens = 0
if kind != 'import-only':
    prepared = prepare_corpus(corpus, cache_root=Path(cache), tokenizer=kind, vocab_size=2000)
    tokens = sum(len(v) for v in prepared.splits.values())
elapsed = time.perf_counter() - started
time.sleep(0.1)
print(json.dumps({'tokenizer': kind, 'seconds': round(elapsed, 1), 'tokens': tokens, 'peak_anon_mib': peak[0] // 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "corpus_memory.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "big.txt"
        if SHARED.is_file():
            unit = SHARED.read_bytes()
        else:
            import sysconfig

            unit = b"".join(p.read_bytes() for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")))
        with open(corpus, "wb") as f:
            for _ in range(max(1, args.megabytes * (1 << 20) // len(unit))):
                f.write(unit)
        size_mib = corpus.stat().st_size / (1 << 20)
        rows = []
        for kind in ("import-only", "char", "byte", "sentencepiece"):
            out = subprocess.run([sys.executable, "-c", CHILD, kind, str(corpus), str(Path(tmp) / f"cache-{kind}")],
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    baseline = rows[0]["peak_anon_mib"]
    print(f"corpus: {size_mib:,.0f} MiB of text")
    print(f"{'tokenizer':<14} {'seconds':>8} {'tokens':>14} {'peak anon MiB':>14} {'over import':>12}")
    for row in rows:
        row["over_import_mib"] = row["peak_anon_mib"] - baseline
        print(f"{row['tokenizer']:<14} {row['seconds']:>8.1f} {row['tokens']:>14,} {row['peak_anon_mib']:>14,} "
              f"{row['over_import_mib']:>12,}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"corpus_mib": round(size_mib, 1), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
