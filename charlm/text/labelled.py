"""Reading labelled text for `charlm classify`: one call finds the format and returns LabelledTexts.

  read_labelled    a file: CSV or TSV with a header row, JSON lines, `label<TAB>text` lines, TREC's
                   `COARSE:fine question` lines, fastText's `__label__X text` lines; a folder of
                   class folders (one file per example, IMDb's train/pos/*.txt); a folder or a list
                   of files with one file per class, one example per line (names/Arabic.txt,
                   rt-polarity.pos); a folder holding one data file reads that file
  read_unlabelled  texts to classify: one per line, a CSV/TSV column, or a JSON-lines field; - is stdin

Text is UTF-8: a BOM is dropped, a line's trailing \\r too, and lines split at "\\n" only (never
at U+0085 and the like). Every file read is a regular file of at most 2 GiB and not binary.
A problem is one CharlmError naming the file, the line and the format detected. The data
classes, line and JSON parsing, the label checks and the split live in labelled_split.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path
from typing import BinaryIO, Optional, Sequence, Union

from charlm.config import ENCODING_ERRORS
from charlm.errors import CharlmError, OptionError
from charlm.text.inputs import read_stdin
from charlm.text.labelled_split import (
    FORMATS,
    LABEL_FIELDS,
    TEXT_FIELDS,
    LabelledSplits,
    LabelledTexts,
    Lines,
    check_labels,
    label_order,
    line_format_of,
    parse_json_lines,
    parse_lines,
    pick_field,
    split_labelled,
    split_lines,
)

__all__ = ["LabelledSplits", "LabelledTexts", "label_order", "read_labelled", "read_unlabelled", "split_labelled"]

MAX_FILE_BYTES = 2 << 30  # one file, read whole
MAX_TOTAL_BYTES = 4 << 30  # the files of a folder together
SNIFF_BYTES = 8192  # a NUL byte here, or mostly bytes that are not UTF-8, means a binary file
NOT_DATA = ("readme", "license", "licence", "sources", "sha256sums", "md5sums", "copying")
_BY_EXTENSION = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".label": "trec",
}
_FIELD_LIMIT = (1 << 31) - 1  # csv's default of 128 KiB a field is shorter than a long review


def _read_text(path: Path, errors: str) -> str:
    """The whole text of a regular UTF-8 file of at most MAX_FILE_BYTES, less a BOM."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise CharlmError(f"{path} is not a regular file (a device, pipe or socket); give a text file")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1) if info.st_size <= MAX_FILE_BYTES else b""
    except OSError as exc:
        raise CharlmError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None
    if info.st_size > MAX_FILE_BYTES or len(raw) > MAX_FILE_BYTES:
        raise CharlmError(
            f"{path} is larger than {MAX_FILE_BYTES >> 30} GiB, the most charlm reads of one file; split it"
        )
    head = raw[:SNIFF_BYTES]
    nul = head.find(b"\0")
    bad = len(head.decode("utf-8", "replace")) - len(head.decode("utf-8", "ignore"))  # bytes replaced
    if nul >= 0 or bad > 0.3 * len(head):
        why = f"a NUL byte at offset {nul}" if nul >= 0 else f"{bad:,} of its first {len(head):,} bytes are not UTF-8"
        raise CharlmError(f"{path} looks like a binary file, not text ({why}); give UTF-8 text (convert UTF-16 first)")
    try:
        return raw.decode("utf-8", errors=errors).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise CharlmError(
            f"{path}: byte {exc.start:,} (line {line:,}) is not valid UTF-8; "
            "convert the file to UTF-8 or pass --encoding-errors replace"
        ) from None


def _header_hits(names: Sequence[str], text_field: Optional[str], label_field: Optional[str]) -> int:
    """How many of (a text field, a label field) a first row names: 0, 1 or 2."""
    lower = {name.strip().casefold() for name in names}
    texts = [text_field.casefold()] if text_field else TEXT_FIELDS
    labels = [label_field.casefold()] if label_field else LABEL_FIELDS
    return any(name in lower for name in texts) + any(name in lower for name in labels)


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


def _detect(path: Path, lines: Lines, text_field: Optional[str], label_field: Optional[str]) -> str:
    """The format of a file, by its extension first and then by its lines."""
    kind = _BY_EXTENSION.get(path.suffix.lower())
    first = lines[0][1]
    if kind == "tsv" and not _header_hits(first.split("\t"), text_field, label_field):
        return "label-tab" if line_format_of(lines) == "label-tab" else "tsv"
    if kind:
        return kind
    if first.lstrip().startswith("{") and _is_object(first):
        return "jsonl"
    if "\t" in first and _header_hits(first.split("\t"), text_field, label_field) == 2:
        return "tsv"
    if "," in first and _header_hits(next(csv.reader([first])), text_field, label_field) == 2:
        return "csv"
    found = line_format_of(lines)
    if found:
        return found
    raise CharlmError(
        f"{path} has no labels charlm can find (read as plain lines); give CSV/TSV with a header, JSON lines, "
        "label<TAB>text or fastText __label__ lines, or a folder with one file per class"
    )


def _unquote(cell: str) -> str:
    """A TSV cell less the quotes that wrap it whole, inner doubled quotes undoubled; other quotes are text."""
    inner = cell[1:-1]
    quoted = len(cell) >= 2 and cell[0] == cell[-1] == '"' and '"' not in inner.replace('""', "")
    return inner.replace('""', '"') if quoted else cell


def _rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(first line number, cells) of each non-blank row. A TSV whose every line has the
    header's number of tabs is cut at tabs only, and a quote is text unless it wraps a whole
    cell; other files follow CSV quoting (a quoted cell may hold the separator or a newline)."""

    def parse(**options) -> list[tuple[int, list[str]]]:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, **options)
        rows, start = [], 1
        try:
            for row in reader:
                if len(row) > 1 or (row and row[0].strip()):
                    rows.append((start, row))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise CharlmError(f"{path} line {reader.line_num:,} cannot be read ({exc}); fix the quoting") from None
        return rows

    previous = csv.field_size_limit(_FIELD_LIMIT)
    try:
        if delimiter == "\t":
            plain = parse(quoting=csv.QUOTE_NONE)
            if all(len(row) == len(plain[0][1]) for _, row in plain):
                return [(number, [_unquote(cell) for cell in row]) for number, row in plain]
        return parse()
    finally:
        csv.field_size_limit(previous)


def _table(path: Path, text: str, kind: str, text_field, label_field, need_label: bool = True):
    """(texts, labels, label field) of a CSV or TSV file with a header row."""
    fmt, where = FORMATS[kind], str(path)
    rows = _rows(path, text, "\t" if kind == "tsv" else ",")
    names = [name.strip() for name in rows[0][1]]
    ti = pick_field(where, names, text_field, "text")
    li = pick_field(where, names, label_field, "label") if need_label else None
    if ti == li:
        raise CharlmError(f"{path}: the text and label fields are both {names[ti]!r}; choose two different columns")
    texts, labels = [], []
    for number, row in rows[1:]:
        at = f"{path} ({fmt}) line {number:,}"
        if len(row) != len(names):
            raise CharlmError(
                f"{at} has {len(row)} fields, the header {len(names)}; quote fields holding the separator"
            )
        for index in (ti, li) if li is not None else (ti,):
            if not row[index].strip():
                raise CharlmError(f"{at}: the field {names[index]!r} is empty; fill it in or remove the row")
        texts.append(row[ti])
        if li is not None:
            labels.append(row[li].strip())
    return texts, labels, names[li] if li is not None else ""


def _no_fields(text_field, label_field, where: str, fmt: str) -> None:
    if text_field or label_field:
        raise CharlmError(f"{where} was read as {fmt}, which has no named fields; leave out --text-field/--label-field")


def _read_file(path: Path, text_field, label_field, errors: str) -> tuple[LabelledTexts, str]:
    """One labelled file, and the name of its label field ("" when it has none)."""
    text = _read_text(path, errors)
    lines = split_lines(text)
    if not lines:
        raise CharlmError(f"{path} is empty (no examples); give a file with labelled texts in it")
    kind = _detect(path, lines, text_field, label_field)
    notes: list[str] = []
    if kind in ("csv", "tsv"):
        texts, labels, field_name = _table(path, text, kind, text_field, label_field)
    elif kind == "jsonl":
        texts, labels, field_name = parse_json_lines(path, lines, text_field, label_field)
    else:
        _no_fields(text_field, label_field, str(path), FORMATS[kind])
        (texts, labels, notes), field_name = parse_lines(str(path), kind, lines), ""
    if not texts:
        raise CharlmError(f"{path} ({FORMATS[kind]}) has a header but no examples; add some")
    return LabelledTexts(texts, labels, str(path), notes, FORMATS[kind]), field_name


def _entries(folder: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(sub-folders, data files, names skipped) in folder, by name; hidden entries ignored."""
    try:
        items = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise CharlmError(f"cannot list {folder} ({exc.strerror or exc}); check the folder") from None
    dirs, files, skipped = [], [], []
    for item in items:
        low = item.name.casefold()
        if low.startswith("."):
            continue
        if item.is_dir():
            dirs.append(item)
        elif not item.is_file() or low.startswith("orig_") or any(p.startswith(NOT_DATA) for p in low.split(".")):
            skipped.append(item.name)
        else:
            files.append(item)
    return dirs, files, skipped


def _check_total(files: list[Path], where: str) -> None:
    if sum(os.stat(f).st_size for f in files) > MAX_TOTAL_BYTES:
        raise CharlmError(
            f"{where} holds over {MAX_TOTAL_BYTES >> 30} GiB of files, the most charlm reads; give a sample"
        )


def _class_files(files: list[Path], where: str, errors: str) -> LabelledTexts:
    """One file per class, one example per line: the label is the file's stem, or its
    suffix when every stem is the same (rt-polarity.pos, rt-polarity.neg)."""
    kinds = [_BY_EXTENSION.get(path.suffix.lower(), "lines") for path in files]
    if len(set(kinds)) > 1:
        other = files[next(i for i, kind in enumerate(kinds) if kind != kinds[0])]
        raise CharlmError(f"{where} mixes files of different kinds ({files[0].name} and {other.name}); give one kind")
    if kinds[0] != "lines":
        raise CharlmError(
            f"{where} holds several files of {FORMATS[kinds[0]]} ({files[0].name}, {files[1].name}); give one of them"
        )
    _check_total(files, where)
    same_stem = len({path.stem for path in files}) == 1
    texts, labels, first = [], [], {}
    for path in files:
        label = path.suffix[1:] if same_stem else path.stem
        if label in first:
            raise CharlmError(f"{first[label]} and {path} both give the label {label!r}; give one file per class")
        first[label] = path
        lines = split_lines(_read_text(path, errors))
        if not lines:
            raise CharlmError(f"{path} is empty (a class with no examples); remove it or add one example per line")
        if found := line_format_of(lines):
            raise CharlmError(f"{path} holds {FORMATS[found]}, not one example per line; give it on its own")
        texts += [line for _, line in lines]
        labels += [label] * len(lines)
    return LabelledTexts(texts, labels, where, [], "one file per class, one example per line")


def _class_folders(dirs: list[Path], where: str, errors: str) -> LabelledTexts:
    """One folder per class, one example per file (aclImdb/train/pos/*.txt)."""
    if len({d.name for d in dirs}) < len(dirs):
        raise CharlmError(f"{where}: two class folders share a name; give one folder per class")
    files, labels, skipped = [], [], []
    for folder in dirs:
        inner, found, passed = _entries(folder)
        if inner:
            raise CharlmError(f"{folder} holds a folder ({inner[0].name}/); a class folder holds one file per example")
        if not found:
            raise CharlmError(f"class folder {folder} holds no example files; add some or remove it")
        files += found
        labels += [folder.name] * len(found)
        skipped += passed
    _check_total(files, where)
    texts = []
    for path in files:
        text = _read_text(path, errors)
        text = text[:-1] if text.endswith("\n") else text
        text = text[:-1] if text.endswith("\r") else text
        if not text.strip():
            raise CharlmError(f"{path} is empty; each file in a class folder is one example: fill it in or remove it")
        texts.append(text)
    notes = [f"skipped {len(skipped)} file(s) that are not examples: {', '.join(skipped[:5])}"] if skipped else []
    source = f"{where} ({len(dirs)} classes, {len(files):,} files)"
    return LabelledTexts(texts, labels, source, notes, "one folder per class, one example per file")


def _read_folder(folder: Path, text_field, label_field, errors: str) -> tuple[LabelledTexts, str]:
    dirs, files, skipped = _entries(folder)
    where = f"{folder.as_posix().rstrip('/')}/"
    if dirs and files:
        raise CharlmError(
            f"{where} mixes class folders and loose files (e.g. {dirs[0].name}/ and {files[0].name}); "
            "give a folder of class folders or a folder of class files, not both"
        )
    if not dirs and not files:
        raise CharlmError(f"{where} holds no data files; give a labelled file or a folder with one file per class")
    field_name = ""
    if len(files) == 1:
        data, field_name = _read_file(files[0], text_field, label_field, errors)
    elif dirs:
        _no_fields(text_field, label_field, where, "one folder per class")
        data = _class_folders(dirs, where, errors)
    else:
        _no_fields(text_field, label_field, where, "one file per class")
        data = _class_files(files, f"{where} ({len(files)} files)", errors)
    if skipped:
        data.notes.insert(
            0, f"skipped {len(skipped)} file(s) in {where} that hold no examples: {', '.join(skipped[:5])}"
        )
    return data, field_name


def _check_errors(encoding_errors: str) -> None:
    if encoding_errors not in ENCODING_ERRORS:
        raise OptionError("encoding_errors", f"must be one of {', '.join(ENCODING_ERRORS)} (got {encoding_errors!r})")


def read_labelled(
    path: Union[str, Path, Sequence[Union[str, Path]]],
    text_field: Optional[str] = None,
    label_field: Optional[str] = None,
    encoding_errors: str = "strict",
    min_classes: int = 2,
) -> LabelledTexts:
    """Labelled texts from a file, a folder, or a list of class files (or of class folders).

    text_field / label_field name the columns of a CSV, TSV or JSON-lines file; by default
    the first of TEXT_FIELDS and of LABEL_FIELDS it has (any case). encoding_errors "replace"
    reads bad UTF-8 bytes as U+FFFD instead of stopping. The result has at least min_classes
    classes (data to evaluate on may hold one) and is not a regression target (check_labels);
    duplicates are kept (split_labelled drops them)."""
    _check_errors(encoding_errors)
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not paths:
        raise CharlmError("no labelled data given; give a file or a folder")
    for item in paths:
        if not item.exists():
            raise CharlmError(f"no such file or folder: {item}; give a labelled file or a folder of class files")
    field_name = ""
    if len(paths) > 1:
        if len({p.is_dir() for p in paths}) > 1:
            raise CharlmError(f"the paths mix folders and files ({paths[0]}, {paths[1]}); give class files or folders")
        _no_fields(text_field, label_field, "a list of paths", "one class per path")
        shown = ", ".join(str(p) for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        data = (_class_folders if paths[0].is_dir() else _class_files)(paths, shown, encoding_errors)
    elif paths[0].is_dir():
        data, field_name = _read_folder(paths[0], text_field, label_field, encoding_errors)
    else:
        data, field_name = _read_file(paths[0], text_field, label_field, encoding_errors)
    check_labels(data, field_name, min_classes)
    return data


def read_unlabelled(
    path: Union[str, Path],
    text_field: Optional[str] = None,
    encoding_errors: str = "strict",
    stdin: Optional[BinaryIO] = None,
) -> list[str]:
    """Texts to classify, in order: one per non-blank line; or the text field of each row of
    a .csv or .tsv file, or of each JSON line (.jsonl, .ndjson, .json, or any file when
    text_field is given). "-" reads standard input (or the binary stream `stdin`)."""
    _check_errors(encoding_errors)
    if str(path) == "-":
        name, text = Path("stdin"), read_stdin(encoding_errors, stdin).removeprefix("\ufeff")
    else:
        name = Path(path)
        if name.is_dir() or not name.exists():
            problem = "is a folder" if name.is_dir() else "does not exist"
            raise CharlmError(f"{name} {problem}; give a file with one text per line (or - for standard input)")
        text = _read_text(name, encoding_errors)
    lines = split_lines(text)
    kind = _BY_EXTENSION.get(name.suffix.lower())
    texts = [line for _, line in lines]
    if lines and kind in ("csv", "tsv"):
        texts = _table(name, text, kind, text_field, None, need_label=False)[0]
    elif lines and (kind == "jsonl" or text_field):
        texts = parse_json_lines(name, lines, text_field, None, need_label=False)[0]
    if not texts:
        raise CharlmError(f"{name} has no text to classify; give one text per line")
    return texts
