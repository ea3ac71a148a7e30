"""Labelled examples in memory: the data classes, parsing lines and JSON records, the label checks, the split.

  LabelledTexts      texts, one label string each, where they came from, notes for the user
  parse_lines        label<TAB>text, TREC `COARSE:fine text` and fastText `__label__X text` lines
  split_lines        a text's non-blank lines, split at "\\n" only
  parse_json_lines   the text and label fields of JSON lines (labels 1, true, 3.71 become strings)
  check_labels       at least two classes, and not a numeric column that looks like a regression target
  label_order        the stable class order: numbers by value, else natural sort ("2" < "10", "neg" < "pos")
  split_labelled     train / val / test: given sets as they are, or a stratified, seeded cut by class

The cut never lets a text leak: exact duplicate (text, label) pairs collapse to one example,
and a text listed with several labels keeps each label but all its copies go to one split.
Where a text goes depends only on the data, the fractions and the seed (a SHA-256 of seed and
text orders each class), so the split is the same on every machine and Python or NumPy version,
whatever order the examples came in. labelled.py reads files and folders; this module never
touches the disk.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from charlm.errors import CharlmError, OptionError

# a numeric label column with more distinct values than this may be a regression target
MAX_NUMERIC_CLASSES = 20
MAX_LABEL_CHARS = 40  # the label of a `label<TAB>text` line
TEXT_FIELDS = ("text", "sentence", "review", "message", "content", "question", "name")
LABEL_FIELDS = ("label", "labels", "class", "category", "target", "sentiment")
FORMATS = {
    "csv": "CSV with a header row",
    "tsv": "TSV with a header row",
    "jsonl": "JSON lines",
    "label-tab": "label<TAB>text lines",
    "trec": "TREC COARSE:fine lines",
    "fasttext": "fastText __label__ lines",
}
_DIGITS = re.compile(r"(\d+)", re.ASCII)
_TREC = re.compile(r"(\w+):(\S+) (.*)\Z", re.DOTALL)
_FASTTEXT = re.compile(r"__label__(\S+)\s*")
Lines = list[tuple[int, str]]  # (line number, line) of each non-blank line


@dataclass
class LabelledTexts:
    """Texts and one label string per text, as the user wrote them."""

    texts: list[str]
    labels: list[str]  # the user's label strings, one per text
    source: str  # what was read, for messages ("reviews.tsv", "names/ (18 files)")
    notes: list[str] = field(default_factory=list)  # worth telling the user (fine labels dropped, ...)
    format: str = ""  # how it was read ("TSV with a header row", "one file per class"), for messages


@dataclass
class LabelledSplits:
    train: LabelledTexts
    val: LabelledTexts  # may be empty (val_fraction 0 and no val set)
    test: LabelledTexts  # may be empty
    labels: list[str]  # every class, in label_order of the training labels
    notes: list[str]  # what splitting did (duplicates dropped, overlaps, ...); reading's notes stay on the data


def split_lines(text: str) -> Lines:
    """(line number, line) of each non-blank line, split at "\\n" only, a trailing \\r dropped."""
    out = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip():
            out.append((number, line))
    return out


def _short_label(label: str) -> bool:
    return 0 < len(label) <= MAX_LABEL_CHARS and not any(c.isspace() for c in label)


def line_format_of(lines: Lines) -> Optional[str]:
    """The labelled line format every line follows ("fasttext", "trec", "label-tab"), or None."""
    if not lines:
        return None
    if lines[0][1].startswith("__label__"):
        return "fasttext"
    if all(_TREC.match(line) for _, line in lines):
        return "trec"
    if all("\t" in line and _short_label(line.split("\t", 1)[0]) for _, line in lines):
        return "label-tab"
    return None


def _split_line(kind: str, line: str) -> tuple[Optional[str], str, str, int]:
    """(label or None when the line is not of the kind, text, TREC's fine label, extra labels)."""
    if kind == "label-tab":
        label, tab, text = line.partition("\t")
        return (label if tab and _short_label(label) else None), text, "", 0
    if kind == "trec":
        match = _TREC.match(line)
        return (match.group(1), match.group(3), match.group(2), 0) if match else (None, "", "", 0)
    found, position = [], 0
    while match := _FASTTEXT.match(line, position):
        found.append(match.group(1))
        position = match.end()
    return (found[0] if found else None), line[position:], "", max(len(found) - 1, 0)


def parse_lines(where: str, kind: str, lines: Lines) -> tuple[list[str], list[str], list[str]]:
    """(texts, labels, notes) of label<TAB>text, TREC or fastText lines; TREC keeps the coarse label."""
    fmt = FORMATS[kind]
    texts, labels, fine, extra = [], [], set(), 0
    for number, line in lines:
        label, text, fine_label, more = _split_line(kind, line)
        if label is None:
            raise CharlmError(f"{where} ({fmt}) line {number:,} is not such a line: {line[:60]!r}; fix or remove it")
        if not text.strip():
            raise CharlmError(f"{where} ({fmt}) line {number:,} has a label but no text; fill it in or remove it")
        texts.append(text)
        labels.append(label)
        fine.add(fine_label)
        extra += more
    notes = [f"{where}: the label is the coarse part before ':'; {len(fine):,} fine labels after it dropped"]
    notes = notes if kind == "trec" else []
    if extra:
        notes.append(f"{where}: {extra:,} extra __label__ prefixes dropped (each line keeps its first label)")
    return texts, labels, notes


def pick_field(where: str, names: Sequence[str], wanted: Optional[str], kind: str, of: str = "columns") -> int:
    """The index of the text or label field (kind) among a header's names: `wanted`
    (exactly, else in any case), or by default the first of TEXT_FIELDS / LABEL_FIELDS."""
    stripped = [name.strip() for name in names]
    lower = [name.casefold() for name in stripped]
    defaults = TEXT_FIELDS if kind == "text" else LABEL_FIELDS
    if wanted:
        for name, pool in ((wanted, stripped), (wanted.casefold(), lower)):
            if name in pool:
                return pool.index(name)
        missing = f"{kind} field {wanted!r}"
    else:
        for name in defaults:
            if name in lower:
                return lower.index(name)
        missing = f"{kind} field (none of {', '.join(defaults)})"
    raise CharlmError(f"{where} has no {missing}; its {of} are: {', '.join(stripped)} (choose one with --{kind}-field)")


def _label_string(value) -> Optional[str]:
    """A JSON label as a string: 1 -> "1", true -> "true", 2.0 -> "2", 3.71 -> "3.71"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def parse_json_lines(where: str, lines: Lines, text_field, label_field, need_label: bool = True):
    """(texts, labels, label field) of JSON lines, one object each."""
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict):
            raise CharlmError(f"{where} (JSON lines) line {number:,} is not a JSON object; give one object per line")
        records.append((number, record))
    keys = list(records[0][1])
    tk = keys[pick_field(where, keys, text_field, "text", "fields")]
    lk = keys[pick_field(where, keys, label_field, "label", "fields")] if need_label else None
    if tk == lk:
        raise CharlmError(f"{where}: the text and label fields are both {tk!r}; choose two different fields")
    texts, labels, fmt = [], [], FORMATS["jsonl"]
    for number, record in records:
        at = f"{where} ({fmt}) line {number:,}"
        for key in (tk, lk) if lk else (tk,):
            if key not in record:
                raise CharlmError(f"{at} has no {key!r} field; its fields are: {', '.join(record)}")
        value = record[tk]
        if not isinstance(value, str) or not value.strip():
            problem = "is empty" if isinstance(value, str) else "is not a string"
            raise CharlmError(f"{at}: the text field {tk!r} {problem}; give the text as a string, or remove the line")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):  # a "\ud800" escape in the JSON
            raise CharlmError(f"{at}: the text holds a lone surrogate (a \\u escape); give UTF-8 text")
        texts.append(value)
        if lk:
            label = _label_string(record[lk])
            if label is None:
                raise CharlmError(
                    f"{at}: the label {record[lk]!r} in {lk!r} is not one label; give a string or a number "
                    "(multi-label data is not supported)"
                )
            labels.append(label)
    return texts, labels, lk or ""


def _as_number(label: str) -> Optional[float]:
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _natural_key(label: str) -> tuple:
    parts = _DIGITS.split(label.casefold())  # text, number, text, ...: the types alternate by position
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def label_order(labels: Iterable[str]) -> list[str]:
    """The distinct labels in a stable order: by value when every label is a number
    ("-1" < "2" < "10"), else natural sort, case-insensitive ("2" < "10", "neg" < "pos")."""
    distinct = set(labels)
    numbers = {label: _as_number(label) for label in distinct}
    if distinct and all(value is not None for value in numbers.values()):
        return sorted(distinct, key=lambda label: (numbers[label], label))
    return sorted(distinct, key=lambda label: (_natural_key(label), label))


def check_labels(data: LabelledTexts, what: str = "", min_classes: int = 2) -> None:
    """Refuse labelled data a classifier cannot learn from: no examples, fewer than
    min_classes classes, or a column of many distinct numbers (a regression target). `what`
    names the label field."""
    where = data.source
    if not data.texts:
        raise CharlmError(f"{where} has no examples; give a file with labelled texts in it")
    counts = Counter(data.labels)
    if len(counts) < min_classes:
        raise CharlmError(
            f"{where} has only one label {data.labels[0]!r}; classification needs at least two classes"
            " (check the label field, or give the other classes' examples too)"
        )
    numbers = [_as_number(label) for label in counts]
    if len(counts) > MAX_NUMERIC_CLASSES and all(value is not None for value in numbers):
        fractional = [label for label in counts if not float(label).is_integer()]
        unique = sum(1 for n in counts.values() if n == 1)
        if fractional or unique > len(data.labels) / 2:
            example = fractional[0] if fractional else label_order(counts)[-1]
            field_name = f" {what!r}" if what else ""
            raise CharlmError(
                f"{where}: the label field{field_name} looks like a regression target ({len(counts):,} distinct "
                f"numbers such as {example}), not classes; bin the values into a few classes or choose another"
                " label field"
            )


def _check_fraction(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 1):
        raise OptionError(name, f"must be at least 0 and below 1 (got {value})")


def _share(count: int, fraction: float) -> int:
    """How many of a class's `count` texts a split with this fraction takes: rounded half
    up, and at least one when the class has three or more and the fraction is not 0."""
    if fraction <= 0:
        return 0
    taken = math.floor(count * fraction + 0.5)
    return max(taken, 1) if count >= 3 else taken


def _place(seed: int, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{text}".encode("utf-8", errors="surrogatepass")).digest()


def _dedupe(data: LabelledTexts, notes: list[str]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Distinct (text, label) pairs in first-seen order, and each text's labels."""
    pairs = list(dict.fromkeys(zip(data.texts, data.labels)))
    dropped = len(data.texts) - len(pairs)
    if dropped:
        notes.append(f"{dropped:,} duplicate examples dropped (same text and label)")
    by_text: dict[str, list[str]] = {}
    for text, label in pairs:
        by_text.setdefault(text, []).append(label)
    conflicting = sum(1 for labels in by_text.values() if len(labels) > 1)
    if conflicting:
        notes.append(
            f"{conflicting:,} texts appear with more than one label; each keeps every label, "
            "and all copies of a text go to the same split"
        )
    return pairs, by_text


def _cut(by_text: dict[str, list[str]], fractions: dict[str, float], seed: int, counts: Counter) -> dict[str, str]:
    """The split ("val" or "test") of each text cut out of training, stratified by class.

    A text with several labels is placed within its rarest class, so small classes keep
    their shares; within a class, texts are taken in the order of their seeded hash."""
    strata: dict[str, list[str]] = {}
    for text, labels in by_text.items():
        home = min(labels, key=lambda label: (counts[label], _natural_key(label), label))
        strata.setdefault(home, []).append(text)
    placed: dict[str, str] = {}
    for label in label_order(strata):
        texts = sorted(strata[label], key=lambda text: _place(seed, text))
        n_test = _share(len(texts), fractions.get("test", 0.0))
        n_val = _share(len(texts), fractions.get("val", 0.0))
        if n_test + n_val and n_test + n_val >= len(texts):
            raise CharlmError(
                f"class {label!r} has only {len(texts)} distinct text(s), too few to leave one for training "
                "after the validation and test shares; lower --val-fraction / --test-fraction or add examples"
            )
        for text in texts[:n_test]:
            placed[text] = "test"
        for text in texts[n_test : n_test + n_val]:
            placed[text] = "val"
    return placed


def _given(
    name: str, data: LabelledTexts, train_labels: set[str], train_texts: set[str], notes: list[str]
) -> LabelledTexts:
    """A validation or test set given as it is, less the examples of classes training lacks."""
    keep = [i for i, label in enumerate(data.labels) if label in train_labels]
    if len(keep) < len(data.labels):
        unknown = label_order(set(data.labels) - train_labels)
        shown = ", ".join(repr(label) for label in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        notes.append(
            f"{len(data.labels) - len(keep):,} {name} examples dropped: their labels ({shown}) have no training example"
        )
    texts = [data.texts[i] for i in keep]
    shared = sum(1 for text in texts if text in train_texts)
    if shared:
        notes.append(f"{shared:,} of {len(texts):,} {name} texts also occur in the training data (kept)")
    return LabelledTexts(texts, [data.labels[i] for i in keep], data.source, list(data.notes), data.format)


def split_labelled(
    data: LabelledTexts,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    val: Optional[LabelledTexts] = None,
    test: Optional[LabelledTexts] = None,
) -> LabelledSplits:
    """Training, validation and test sets from `data`.

    A set given (`val`, `test`) is used as it is: nothing in it is removed but the examples of
    classes training lacks (noted), and the notes say how many of its texts training also
    holds. A set not given is cut from `data` by its fraction, per class (see _cut); 0 leaves
    it empty. Duplicates in `data` are collapsed before anything is cut."""
    _check_fraction(val_fraction, "val_fraction")
    _check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1:
        raise OptionError(
            "val_fraction", "plus test_fraction must leave something to train on (their sum must be below 1)"
        )
    if not data.texts:
        raise CharlmError(f"{data.source} has no examples; give a file with labelled texts in it")
    notes: list[str] = []
    pairs, by_text = _dedupe(data, notes)
    fractions = {"val": 0.0 if val is not None else val_fraction, "test": 0.0 if test is not None else test_fraction}
    placed = _cut(by_text, fractions, seed, Counter(label for _, label in pairs)) if any(fractions.values()) else {}
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for text, label in pairs:
        parts[placed.get(text, "train")].append((text, label))
    train_labels = {label for _, label in parts["train"]}
    if len(train_labels) < 2:
        raise CharlmError(
            f"{data.source} has only one label {pairs[0][1]!r}; classification needs at least two classes"
        )
    for name in ("val", "test"):
        lost = label_order({label for _, label in parts[name]} - train_labels)
        if lost:
            raise CharlmError(
                f"class {lost[0]!r} has no training example: all its examples fell in the {name} split; "
                "lower --val-fraction / --test-fraction or add examples of it"
            )

    def cut(name: str) -> LabelledTexts:
        return LabelledTexts(
            [t for t, _ in parts[name]],
            [lab for _, lab in parts[name]],
            f"{data.source} ({name} split)",
            [],
            data.format,
        )

    train = cut("train")
    train_texts = set(train.texts)
    val_set = _given("validation", val, train_labels, train_texts, notes) if val is not None else cut("val")
    test_set = _given("test", test, train_labels, train_texts, notes) if test is not None else cut("test")
    return LabelledSplits(train, val_set, test_set, label_order(train_labels), notes)
