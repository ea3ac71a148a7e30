"""Text for tests: generated corpora that always exist, and the real ones beside the checkout.

Generated text (word_text, numbered_lines) lets a test that needs *some* corpus run on a fresh
clone; shared_file() gives a real corpus from the shared data folder, or skips saying why.
The shared folder is ../shared/data beside the checkout, or CHARLM_TEST_SHARED_DATA when set
(point it at an empty folder to see which tests need the real corpora).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("CHARLM_TEST_SHARED_DATA") or REPO.parent / "shared" / "data")

# Sixteen short words: char vocabularies stay small and every text of them is ASCII.
WORDS = "the a cat dog sat on mat ran far and then slept under warm sun while birds sang".split()


def shared_file(name: str) -> Path:
    """A real corpus from the shared data folder, or a skip that says why (a fresh clone has none)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real corpus {name} not found in {SHARED_DATA} (it sits beside the checkout in CI)")
    return path


def udhr_slice(windows: int = 30, size: int = 1500) -> str:
    """Whole lines from `windows` places spread over udhr_multiscript.txt: many scripts at once
    (skips when the real corpus is absent)."""
    text = shared_file("udhr_multiscript.txt").read_text(encoding="utf-8")
    step = len(text) // windows
    parts = []
    for k in range(windows):
        chunk = text[k * step : k * step + size]
        parts.append(chunk[chunk.find("\n") + 1 : chunk.rfind("\n") + 1])
    return "".join(parts)


def word_text(chars: int, seed: int = 0, extra: tuple[str, ...] = ()) -> str:
    """Exactly `chars` characters of WORDS (plus `extra`) with spaces, and a full stop and
    newline after about one word in ten; the same seed gives the same text."""
    rng = random.Random(seed)
    vocabulary = WORDS + list(extra)
    out, length = [], 0
    while length < chars:
        word = rng.choice(vocabulary)
        sep = ".\n" if rng.random() < 0.1 else " "
        out.append(word + sep)
        length += len(word) + len(sep)
    return "".join(out)[:chars]


# Short sentences in many scripts, written for these tests: Latin with diacritics, Greek,
# Cyrillic, Arabic, Hebrew, Devanagari, Han, kana, Hangul, Thai, emoji (ZWJ sequences, flags,
# skin tones) and characters outside the BMP: UTF-8 characters of 1, 2, 3 and 4 bytes.
MULTISCRIPT_LINES = [
    "English: every person has the right to learn and to speak freely.",
    "Français : chaque être humain a le droit d'apprendre, même à l'âge mûr.",
    "Deutsch: Jeder Mensch hat das Recht, frei zu sprechen; Größe zählt nicht.",
    "Čeština: každý člověk má právo se učit a svobodně mluvit.",
    "Ελληνικά: κάθε άνθρωπος έχει το δικαίωμα να μαθαίνει.",
    "Русский: каждый человек имеет право учиться и говорить свободно.",
    "العربية: لكل إنسان الحق في التعلم والكلام بحرية.",
    "עברית: לכל אדם יש זכות ללמוד ולדבר בחופשיות.",
    "हिन्दी: हर व्यक्ति को सीखने और बोलने का अधिकार है।",
    "中文：人人有学习和自由表达的权利。",
    "日本語：すべての人は学び、自由に話す権利がある。",
    "한국어: 모든 사람은 배우고 자유롭게 말할 권리가 있다.",
    "ไทย: ทุกคนมีสิทธิ์ที่จะเรียนรู้และพูดอย่างเสรี",
    "Emoji: 👩‍🔬 🇫🇷 👍🏽 🎉 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 text.",
]


def multiscript_text(lines: int, seed: int = 0) -> str:
    """`lines` lines drawn from MULTISCRIPT_LINES: the multi-script text that always exists
    (udhr_slice gives real text of the same kind when the shared corpora are there)."""
    rng = random.Random(seed)
    return "".join(rng.choice(MULTISCRIPT_LINES) + "\n" for _ in range(lines))


def numbered_lines(lines: int = 120) -> str:
    """'line i: the quick brown fox jumps over the lazy dog.' for i below `lines` (54-56
    characters each): 120 lines are plenty for --batch-size 4 --seq-len 16."""
    return "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(lines))


def write_text(path: Path, text: str) -> Path:
    """Write text as UTF-8 bytes (no newline translation), creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path
