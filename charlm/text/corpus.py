"""Prepare a corpus: split it, fit the tokenizer, and encode it to cached token files.

Splits are cut in characters, not tokens, so every tokenizer sees the same validation text:

    |<------------- train ------------->|<-- val -->|<- test ->|
    0                          n*(1-v-t)       n*(1-t)         n     (n = characters)

unless --val-data / --test-data name their own sources (sources.py reads them). The
tokenizer is fitted on the training split only. Each split is encoded chunk by chunk into
<split>.npy (the smallest unsigned dtype that holds the vocabulary) in a cache folder keyed
by the sources (path, size, mtime) and the tokenizer options, then memory-mapped; a second
run with the same corpus and tokenizer reuses it without reading the text again. Given a
tokenizer already fitted (`use_tokenizer`, another run's), its fingerprint joins the key, so
such a cache is never taken for one fitted on this text. A cache
folder appears whole (built under a hidden name, then renamed) or not at all, a full disk
included, and one that no longer matches its meta.json is rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from charlm.config import TrainConfig
from charlm.errors import CharlmError, write_error
from charlm.files import atomic_write_bytes, fsync_dir, temporary_folder
from charlm.text.sources import (
    TextCounter,
    TextSource,
    check_not_empty,
    count_text,
    newline_chunks,
    resolve_source,
    slice_stream,
)
from charlm.text.tokenizer import Tokenizer, build_tokenizer, fingerprint, load_tokenizer, token_dtype

CACHE_FORMAT = 2
SPLITS = ("train", "val", "test")
UNKNOWN_CHARS_KEPT = 20  # the most common characters a char tokenizer did not know, kept in meta.json

# ---------------------------------------------------------------------------------------
# Encoding into token files


class _TokenFileWriter:
    """Streams id chunks into a .npy file whose header gets the final length at close.

    Plain writes, no memory map: on a full disk a memory-mapped write dies of SIGBUS, a
    plain one raises OSError(ENOSPC) that can be reported. A 1-D .npy header is 128 bytes
    whatever the length, so the one written first is overwritten in place.
    """

    def __init__(self, folder: Path, name: str, dtype: np.dtype):
        self.path = folder / f"{name}.npy"
        self.dtype = dtype
        self.count = 0
        self._file = open(self.path, "wb")
        self._header_size = self._file.write(self._header())

    def _header(self) -> bytes:
        buffer = io.BytesIO()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.count,)}
        np.lib.format.write_array_header_1_0(buffer, header)
        return buffer.getvalue()

    def append(self, ids: np.ndarray) -> None:
        if ids.size:
            self._file.write(np.ascontiguousarray(ids, dtype=self.dtype).data)
            self.count += int(ids.size)

    def close(self) -> None:
        try:
            header = self._header()
            if len(header) != self._header_size:
                raise RuntimeError(f".npy header grew from {self._header_size} to {len(header)} bytes")
            self._file.seek(0)
            self._file.write(header)
            self._file.flush()
        finally:
            self._file.close()


@dataclass
class SplitPlan:
    """Where each split's text comes from: a source and a character range in it."""

    source: TextSource
    start: int
    end: Optional[int]  # None: to the end

    def iter_text(self, errors: str) -> Iterator[str]:
        chunks = self.source.iter_text(errors)
        if self.start == 0 and self.end is None:
            return chunks
        return slice_stream(chunks, self.start, self.end if self.end is not None else 1 << 62)


@dataclass
class PreparedCorpus:
    """Tokenizer plus memory-mapped token arrays for each split (empty array when absent)."""

    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    chars: dict[str, int]
    bytes: dict[str, int]
    words: dict[str, int]
    unknown: dict[str, int]
    label: str
    cache_dir: Path
    from_cache: bool
    notes: list[str]
    # the characters read as unknown (char tokenizer), most common first, with their counts
    unknown_chars: dict[str, int] = field(default_factory=dict)


def default_cache_root(data_dir: Optional[Path] = None) -> Path:
    env = os.environ.get("CHARLM_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from charlm.text.corpora import default_data_dir

    return (data_dir or default_data_dir()) / "cache"


def prepare_corpus(
    data: str,
    val_data: Optional[str] = None,
    test_data: Optional[str] = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    tokenizer: str = "char",
    vocab_size: int = 2000,
    spm_model_type: str = "unigram",
    encoding_errors: str = "strict",
    threads: int = 1,
    cache_root: Optional[Path] = None,
    data_dir: Optional[Path] = None,
    main_source: Optional[TextSource] = None,
    on_stage: Optional[Callable[[str], None]] = None,
    use_tokenizer: Optional[Tokenizer] = None,
) -> PreparedCorpus:
    """Resolve, split, fit the tokenizer and encode; reuse the cache when nothing changed.

    use_tokenizer: encode with this tokenizer instead of fitting one (tokenizer, vocab_size
    and spm_model_type are then unused); the caller words what it does not know."""
    stage = on_stage or (lambda message: None)
    main = main_source or resolve_source(data, "--data", data_dir)
    val_source = resolve_source(val_data, "--val-data", data_dir) if val_data else None
    test_source = resolve_source(test_data, "--test-data", data_dir) if test_data else None
    notes = list(main.notes)
    if use_tokenizer is not None:
        tokenizer = use_tokenizer.kind
    fitted = use_tokenizer is None

    key_fields = {
        "format": CACHE_FORMAT,
        "main": main.fingerprint(),
        "val": val_source.fingerprint() if val_source else None,
        "test": test_source.fingerprint() if test_source else None,
        "val_fraction": None if val_source else val_fraction,
        "test_fraction": None if test_source else test_fraction,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size if fitted and tokenizer == "sentencepiece" else None,
        "spm_model_type": spm_model_type if fitted and tokenizer == "sentencepiece" else None,
        "encoding_errors": encoding_errors,
    }
    if not fitted:  # (only then, so the keys of fitted caches stay as they were)
        key_fields["tokenizer_fingerprint"] = fingerprint(use_tokenizer)
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cache_root) if cache_root else default_cache_root(data_dir)
    folder = root / f"{main.label[:40]}-{tokenizer}-{key}"

    from_cache = (folder / "meta.json").is_file()
    if from_cache:
        try:
            meta, tok, splits = _load_cache(folder)
        except CharlmError:
            # a cache folder damaged since it was written (by hand, a disk fault): never
            # trust it, rebuild it from the text
            _discard_cache(folder)
            from_cache = False
    if not from_cache:
        stage(f"reading corpus {main.label}")
        _build_cache(folder, main, val_source, test_source, key_fields, threads, stage, use_tokenizer)
        meta, tok, splits = _load_cache(folder)
    if fitted and tokenizer == "sentencepiece" and tok.vocab_size < vocab_size:
        notes.append(
            f"--vocab-size {vocab_size:,}: sentencepiece found only {tok.vocab_size:,} pieces in this corpus, "
            f"so the vocabulary has {tok.vocab_size:,}; more varied text gives a larger one"
        )
    unknown = meta.get("unknown", {})
    for name in ("val", "test") if fitted else ():
        if unknown.get(name):
            notes.append(
                f"{unknown[name]:,} character(s) of the {name} split never occur in the training split; "
                "they are scored as the unknown symbol"
            )
    return PreparedCorpus(
        tokenizer=tok,
        splits=splits,
        chars=meta["chars"],
        bytes=meta["bytes"],
        words=meta["words"],
        unknown=meta["unknown"],
        label=main.label,
        cache_dir=folder,
        from_cache=from_cache,
        notes=notes,
        unknown_chars=meta["unknown_chars"],
    )


def prepare_corpus_for(
    config: TrainConfig,
    threads: int = 1,
    main_source: Optional[TextSource] = None,
    on_stage: Optional[Callable[[str], None]] = None,
    use_tokenizer: Optional[Tokenizer] = None,
) -> PreparedCorpus:
    """The corpus a training configuration names, as training reads it (a run's own config
    gives back the very splits it was trained and validated on, from the cache if it is there).
    A run started from another run's tokenizer (config.init_from) needs that tokenizer, its
    own copy, as use_tokenizer to get its splits back."""
    return prepare_corpus(
        config.data,
        val_data=config.val_data,
        test_data=config.test_data,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        tokenizer=config.tokenizer,
        vocab_size=config.vocab_size,
        spm_model_type=config.spm_model_type,
        encoding_errors=config.encoding_errors,
        threads=threads,
        main_source=main_source,
        on_stage=on_stage,
        use_tokenizer=use_tokenizer,
    )


def _load_cache(folder: Path) -> tuple[dict, Tokenizer, dict[str, np.ndarray]]:
    """meta.json, the tokenizer and the memory-mapped splits of a cache folder, each
    checked against meta.json; CharlmError when anything is missing or does not match."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        tok = load_tokenizer(folder)
        expected = meta["key"].get("tokenizer_fingerprint")
        if expected is not None and fingerprint(tok) != expected:
            raise ValueError("its tokenizer.json is not the tokenizer it was encoded with")
        splits = {}
        for name in SPLITS:
            count = int(meta["tokens"][name])
            if not count:
                splits[name] = np.zeros(0, np.uint8)
                continue
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if array.ndim != 1 or len(array) != count or array.dtype != token_dtype(tok.vocab_size):
                raise ValueError(f"{name}.npy holds {array.shape} {array.dtype}, meta.json says {count}")
            splits[name] = array
        meta.setdefault("unknown_chars", {})  # caches from before it was kept
        for key in ("chars", "bytes", "words", "unknown", "unknown_chars"):
            if not isinstance(meta[key], dict):
                raise ValueError(f"meta.json {key} is not a mapping")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CharlmError(f"token cache {folder} is damaged ({exc}); delete it and run again") from None
    return meta, tok, splits


def _discard_cache(folder: Path) -> None:
    """Move a cache folder out of the way (atomically, so no reader sees half of it) and delete it."""
    doomed = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        os.rename(folder, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _build_cache(folder, main, val_source, test_source, key_fields, threads, stage, use_tokenizer=None) -> None:
    errors = key_fields["encoding_errors"]
    main_chars, main_bytes, has_text = count_text(main, errors)
    check_not_empty(main, "--data", main_chars, has_text)

    plans: dict[str, Optional[SplitPlan]] = {}
    cut_test = 0 if test_source else int(main_chars * key_fields["test_fraction"])
    cut_val = 0 if val_source else int(main_chars * key_fields["val_fraction"])
    train_end = main_chars - cut_val - cut_test
    if train_end <= 0:
        raise CharlmError("--val-fraction and --test-fraction leave no training text; lower them")
    plans["train"] = SplitPlan(main, 0, train_end if (cut_val or cut_test) else None)
    plans["val"] = (
        SplitPlan(val_source, 0, None)
        if val_source
        else (SplitPlan(main, train_end, train_end + cut_val) if cut_val else None)
    )
    plans["test"] = (
        SplitPlan(test_source, 0, None)
        if test_source
        else (SplitPlan(main, train_end + cut_val, main_chars) if cut_test else None)
    )
    for option, source in (("--val-data", val_source), ("--test-data", test_source)):
        if source is not None:
            chars, _, has_text = count_text(source, errors)
            check_not_empty(source, option, chars, has_text)

    if use_tokenizer is not None:
        tok = use_tokenizer
    else:
        stage(f"fitting the {key_fields['tokenizer']} tokenizer on the training split")
        tok = build_tokenizer(
            key_fields["tokenizer"],
            lambda: plans["train"].iter_text(errors),
            vocab_size=key_fields["vocab_size"] or 0,
            spm_model_type=key_fields["spm_model_type"] or "unigram",
            threads=threads,
        )

    try:
        _write_cache(folder, main, plans, tok, key_fields, stage)
    except OSError as exc:  # reading the text raises CharlmError, so this is a write that failed
        fix = "set CHARLM_CACHE_DIR to a writable folder with room"
        raise write_error(exc, "the token cache", folder.parent, fix) from None


def _write_cache(folder, main, plans, tok, key_fields, stage) -> None:
    """Encode every split into a hidden work folder, then rename it into place: a cache folder
    with a meta.json is complete, and a failure at any point leaves none."""
    errors = key_fields["encoding_errors"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = temporary_folder(folder.parent, f".{folder.name}.")
    try:
        tok.save(work)
        dtype = token_dtype(tok.vocab_size)
        tokens, chars, nbytes, unknown, words = {}, {}, {}, {}, {}
        unknown_chars: Counter = Counter()
        for name in SPLITS:
            plan = plans[name]
            writer = _TokenFileWriter(work, name, dtype)
            counter = TextCounter()
            n_unknown = 0
            if plan is not None:
                stage(f"encoding the {name} split")
                for chunk in newline_chunks(plan.iter_text(errors)):
                    ids = tok.encode(chunk)
                    writer.append(ids)
                    counter.add(chunk)
                    if tok.unk_id is not None:
                        found = int(np.count_nonzero(ids == tok.unk_id))
                        n_unknown += found
                        if found and tok.kind == "char":  # one id per character: count which
                            code_points = np.frombuffer(chunk.encode("utf-32-le"), dtype="<u4")[ids == tok.unk_id]
                            values, counts = np.unique(code_points, return_counts=True)
                            unknown_chars.update(dict(zip(map(chr, values.tolist()), counts.tolist())))
            writer.close()
            tokens[name], chars[name], nbytes[name], unknown[name] = (
                writer.count,
                counter.chars,
                counter.bytes,
                n_unknown,
            )
            words[name] = counter.words
        meta = {
            "key": key_fields,
            "label": main.label,
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "tokens": tokens,
            "chars": chars,
            "bytes": nbytes,
            "words": words,
            "unknown": unknown,
            "unknown_chars": dict(unknown_chars.most_common(UNKNOWN_CHARS_KEPT)),
        }
        atomic_write_bytes(work / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
        for path in work.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.rename(work, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not just a concurrent run that won the race
                raise
        fsync_dir(folder.parent)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
