"""Tests for charlm.text.corpus (prepare_corpus, resolve_source, TextSource) and charlm.text.corpora.

Covers character-based train/val/test splits that decode back to the exact text; the
smallest unsigned dtype for the token files and their memory mapping; the token cache (hit on
a second call, miss when the file's mtime or size changes, one folder per tokenizer);
streamed reading with a tiny READ_CHUNK_BYTES giving the same result as the default (UTF-8
characters split across blocks, SentencePiece tokens equal to encoding the whole text);
folder corpora (sorted paths, hidden and binary files skipped, a newline after a file that
lacks one); separate --val-data/--test-data files; CharlmError messages for empty,
whitespace-only, missing, folder-without-text and invalid UTF-8 sources (byte offset, line
number, --encoding-errors) and the "replace" escape hatch; the unknown-character note; the
named corpora (download from a file:// mirror with a sha256 check, the offline fallback to
pystdlib); and that a failed encode leaves no half-written cache folder behind.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import entries, shared_file, write_text

import charlm.text.sources as sources
from charlm.errors import CharlmError
from charlm.text.corpora import SHAKESPEARE, fetch, resolve_default_corpus
from charlm.text.corpus import SPLITS, prepare_corpus
from charlm.text.sources import TextSource, resolve_source

DEFAULT_CHUNK = sources.READ_CHUNK_BYTES

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "naïve café über straße привет мир καλημέρα ελλάδα 日本語 中文 한국어 שלום مرحبا 😀 👩\u200d👩\u200d👧 🇯🇵"
).split()


def mixed_text(lines: int = 600, seed: int = 0) -> str:
    """Lines of ASCII and multi-byte words (2, 3 and 4 bytes in UTF-8)."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        out.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + rng.choice([".", ",", "!", ""]))
    return "\n".join(out) + "\n"


def decode_split(prep, name: str) -> str:
    return prep.tokenizer.decode(np.asarray(prep.splits[name], dtype=np.int64))


def decode_all(prep) -> str:
    return "".join(decode_split(prep, name) for name in SPLITS)


# ---------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize("test_fraction", [0.0, 0.05])
def test_splits_are_cut_in_characters_at_the_end(tmp_path, test_fraction):
    text = mixed_text(400)
    n = len(text)
    assert len(text.encode("utf-8")) > n  # characters and bytes differ: the cut is in characters
    path = write_text(tmp_path / "corpus.txt", text)
    prep = prepare_corpus(str(path), val_fraction=0.1, test_fraction=test_fraction, tokenizer="char")

    n_val, n_test = int(n * 0.1), int(n * test_fraction)
    n_train = n - n_val - n_test
    assert prep.chars == {"train": n_train, "val": n_val, "test": n_test}
    assert decode_split(prep, "train") == text[:n_train]
    assert decode_split(prep, "val") == text[n_train : n_train + n_val]
    assert decode_split(prep, "test") == text[n_train + n_val :]
    assert decode_all(prep) == text
    assert sum(prep.bytes.values()) == len(text.encode("utf-8"))
    for name in SPLITS:  # one id per character
        assert len(prep.splits[name]) == prep.chars[name]
    if test_fraction == 0:
        assert len(prep.splits["test"]) == 0
    assert prep.label == "corpus"


def test_fractions_that_leave_no_training_text_are_an_error(tmp_path):
    path = write_text(tmp_path / "c.txt", "some text here\n")
    with pytest.raises(CharlmError, match="no training text"):
        prepare_corpus(str(path), val_fraction=0.6, test_fraction=0.4)


# ---------------------------------------------------------------------------------------
# Token files: dtype and memory mapping


@pytest.mark.parametrize(
    "tokenizer, dtype",
    [("char", np.uint8), ("byte", np.uint8), ("sentencepiece", np.uint16)],
)
def test_token_files_use_the_smallest_dtype_and_are_memory_mapped(tmp_path, tokenizer, dtype):
    path = write_text(tmp_path / "corpus.txt", mixed_text(300))
    prep = prepare_corpus(str(path), tokenizer=tokenizer, vocab_size=400)
    if tokenizer == "sentencepiece":
        assert 256 < prep.tokenizer.vocab_size <= 400
    for name in ("train", "val"):
        arr = prep.splits[name]
        assert isinstance(arr, np.memmap)
        assert arr.dtype == np.dtype(dtype)
        assert (prep.cache_dir / f"{name}.npy").is_file()
        assert int(arr.max()) < prep.tokenizer.vocab_size
    assert decode_split(prep, "train") + decode_split(prep, "val") == path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Cache


def test_second_call_comes_from_the_cache(tmp_path):
    path = write_text(tmp_path / "corpus.txt", mixed_text(200))
    first = prepare_corpus(str(path), tokenizer="char")
    stages: list[str] = []
    second = prepare_corpus(str(path), tokenizer="char", on_stage=stages.append)
    assert first.from_cache is False
    assert second.from_cache is True
    assert second.cache_dir == first.cache_dir
    assert stages == []  # nothing was read, fitted or encoded again
    for name in SPLITS:
        assert np.array_equal(first.splits[name], second.splits[name])
    assert second.chars == first.chars
    assert second.tokenizer.vocab_size == first.tokenizer.vocab_size


def test_a_touched_file_is_encoded_again(tmp_path):
    path = write_text(tmp_path / "corpus.txt", mixed_text(200))
    st = path.stat()
    first = prepare_corpus(str(path), tokenizer="char")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # same bytes, new mtime
    again = prepare_corpus(str(path), tokenizer="char")
    assert again.from_cache is False
    assert again.cache_dir != first.cache_dir
    assert np.array_equal(again.splits["train"], first.splits["train"])


def test_a_changed_file_is_encoded_again(tmp_path):
    path = write_text(tmp_path / "corpus.txt", mixed_text(200))
    first = prepare_corpus(str(path), tokenizer="char")
    new_text = mixed_text(250, seed=9)
    write_text(path, new_text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    again = prepare_corpus(str(path), tokenizer="char")
    assert again.from_cache is False
    assert decode_all(again) == new_text
    assert decode_all(first) != new_text


def test_a_different_tokenizer_uses_a_different_cache_folder(tmp_path):
    path = write_text(tmp_path / "corpus.txt", mixed_text(200))
    char = prepare_corpus(str(path), tokenizer="char")
    byte = prepare_corpus(str(path), tokenizer="byte")
    spm = prepare_corpus(str(path), tokenizer="sentencepiece", vocab_size=400)
    assert byte.from_cache is False and spm.from_cache is False
    assert len({char.cache_dir, byte.cache_dir, spm.cache_dir}) == 3
    assert byte.tokenizer.kind == "byte" and spm.tokenizer.kind == "sentencepiece"
    assert decode_all(char) == decode_all(byte) == decode_all(spm)


# ---------------------------------------------------------------------------------------
# Streaming


def _straddles(data: bytes, block: int) -> bool:
    """Whether some block boundary falls inside a multi-byte UTF-8 character."""
    return any(0x80 <= data[k] < 0xC0 for k in range(block, len(data), block))


@pytest.mark.parametrize("tokenizer", ["char", "byte", "sentencepiece"])
def test_small_read_chunks_give_the_same_result(tmp_path, monkeypatch, tokenizer):
    text = mixed_text(700)
    path = write_text(tmp_path / "corpus.txt", text)
    assert _straddles(text.encode("utf-8"), 1000)

    reference = prepare_corpus(str(path), tokenizer=tokenizer, vocab_size=400, cache_root=tmp_path / "big")
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 1000)
    small = prepare_corpus(str(path), tokenizer=tokenizer, vocab_size=400, cache_root=tmp_path / "small")

    assert small.from_cache is False
    assert small.chars == reference.chars and small.bytes == reference.bytes
    assert small.tokenizer.token_bytes() == reference.tokenizer.token_bytes()
    for name in SPLITS:
        assert np.array_equal(small.splits[name], reference.splits[name]), name
    assert decode_all(small) == text


def _long_line_text() -> str:
    # mostly short lines, plus one line far longer than a read block
    return mixed_text(300, seed=4) + " ".join(["longline"] + _WORDS * 40) + "\n" + mixed_text(300, seed=5)


@pytest.mark.parametrize("source", ["inline", "shakespeare"])
def test_sentencepiece_tokens_equal_encoding_the_whole_text(tmp_path, monkeypatch, source):
    if source == "inline":
        text = _long_line_text()
    else:
        text = shared_file("tinyshakespeare.txt").read_text(encoding="utf-8")[:40000]
        text += "Ünïcödé wörds, naïve café; Привет мир, как дела?\n" * 30
    path = write_text(tmp_path / "corpus.txt", text)
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 1000)
    prep = prepare_corpus(str(path), tokenizer="sentencepiece", vocab_size=400)
    tok = prep.tokenizer
    n_train = prep.chars["train"]
    assert np.array_equal(np.asarray(prep.splits["train"], dtype=np.int64), tok.encode(text[:n_train]))
    assert np.array_equal(np.asarray(prep.splits["val"], dtype=np.int64), tok.encode(text[n_train:]))


def test_iter_text_yields_the_file_text_for_any_block_size(tmp_path, monkeypatch):
    text = mixed_text(100)
    path = write_text(tmp_path / "t.txt", text)
    source = resolve_source(str(path))
    for block in (1, 2, 3, 7, 4096):
        monkeypatch.setattr(sources, "READ_CHUNK_BYTES", block)
        chunks = list(source.iter_text())
        assert "".join(chunks) == text
        assert all(chunks)
        if block <= 3:
            assert len(chunks) > 100  # really streamed


# ---------------------------------------------------------------------------------------
# Folder corpora and separate files


def test_folder_corpus(tmp_path):
    root = tmp_path / "texts"
    write_text(root / "b.txt", "second file\n")
    write_text(root / "a.txt", "first file without newline")
    write_text(root / "sub" / "c.txt", "in a subfolder 日本\n")
    write_text(root / "sub" / "deeper" / "d.md", "deepest ✓\n")
    write_text(root / "z.py", "print('last')\n")
    write_text(root / ".hidden.txt", "HIDDEN FILE\n")
    write_text(root / ".git" / "config", "HIDDEN FOLDER\n")
    (root / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))

    source = resolve_source(str(root))
    rel = [p.relative_to(root).as_posix() for p in source.files]
    assert rel == ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.md", "z.py"]
    assert source.label == "texts"
    assert len(source.notes) == 1 and "binary" in source.notes[0] and "1" in source.notes[0]

    expected = "first file without newline\nsecond file\nin a subfolder 日本\ndeepest ✓\nprint('last')\n"
    assert "".join(source.iter_text()) == expected
    prep = prepare_corpus(str(root), val_fraction=0.0, tokenizer="char")
    assert decode_all(prep) == expected
    assert any("binary" in note for note in prep.notes)
    assert "HIDDEN" not in decode_all(prep)


def test_separate_val_and_test_files_are_used_as_given(tmp_path):
    main_text = mixed_text(200, seed=1)
    val_text = mixed_text(30, seed=2)
    test_text = mixed_text(20, seed=3)
    main = write_text(tmp_path / "main.txt", main_text)
    val = write_text(tmp_path / "val.txt", val_text)
    test = write_text(tmp_path / "test.txt", test_text)
    prep = prepare_corpus(str(main), val_data=str(val), test_data=str(test), val_fraction=0.3, test_fraction=0.2)
    assert prep.chars == {"train": len(main_text), "val": len(val_text), "test": len(test_text)}
    tok = prep.tokenizer
    unseen = set(val_text + test_text) - set(main_text)
    expected_val = "".join("\ufffd" if c in unseen else c for c in val_text)
    expected_test = "".join("\ufffd" if c in unseen else c for c in test_text)
    assert decode_split(prep, "train") == main_text
    assert decode_split(prep, "val") == expected_val
    assert decode_split(prep, "test") == expected_test
    assert tok.vocab_size == len(set(main_text)) + 1  # fitted on the training text only


def test_unknown_characters_in_val_are_noted_and_encoded_as_unknown(tmp_path):
    train = "hello world\n" * 90  # 1,080 characters
    val = ("Zebra 日本 ok\n" * 20)[:120]
    text = train + val
    assert int(len(text) * 0.1) == len(val)
    path = write_text(tmp_path / "c.txt", text)
    prep = prepare_corpus(str(path), val_fraction=0.1, tokenizer="char")
    seen = set(train)
    unknown_positions = [i for i, c in enumerate(val) if c not in seen]
    count = len(unknown_positions)
    assert count > 0
    ids = np.asarray(prep.splits["val"])
    assert np.flatnonzero(ids == prep.tokenizer.unk_id).tolist() == unknown_positions
    notes = [n for n in prep.notes if "val" in n]
    assert len(notes) == 1 and f"{count:,}" in notes[0]
    assert not any("test split" in n for n in prep.notes)  # the test split is empty here
    # the note survives a cache hit
    again = prepare_corpus(str(path), val_fraction=0.1, tokenizer="char")
    assert again.from_cache and notes[0] in again.notes


def test_no_unknown_note_when_val_is_covered(tmp_path):
    path = write_text(tmp_path / "c.txt", "abc abc abc\n" * 50)
    prep = prepare_corpus(str(path), tokenizer="char")
    assert not any("never occur" in n for n in prep.notes)
    assert not np.any(np.asarray(prep.splits["val"]) == 0)


# ---------------------------------------------------------------------------------------
# Errors


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(CharlmError, match="empty") as info:
        prepare_corpus(str(path))
    assert str(path) in str(info.value)


def test_whitespace_only_file_is_an_error(tmp_path):
    path = write_text(tmp_path / "blank.txt", "  \n\t\n\r\n   \n")
    with pytest.raises(CharlmError, match="whitespace") as info:
        prepare_corpus(str(path))
    assert str(path) in str(info.value)


def test_empty_val_file_is_an_error_naming_the_option(tmp_path):
    main = write_text(tmp_path / "main.txt", "real text\n" * 10)
    val = tmp_path / "val.txt"
    val.write_bytes(b"")
    with pytest.raises(CharlmError, match="--val-data"):
        prepare_corpus(str(main), val_data=str(val))


def test_missing_path_names_the_path_and_the_named_corpora(tmp_path):
    missing = tmp_path / "no" / "such.txt"
    for call in (lambda: resolve_source(str(missing)), lambda: prepare_corpus(str(missing))):
        with pytest.raises(CharlmError) as info:
            call()
        message = str(info.value)
        assert str(missing) in message
        assert "shakespeare" in message and "pystdlib" in message


@pytest.mark.parametrize("contents", ["nothing", "binary-and-hidden"])
def test_folder_without_text_files_is_an_error(tmp_path, contents):
    root = tmp_path / "folder"
    root.mkdir()
    if contents == "binary-and-hidden":
        (root / "data.bin").write_bytes(b"\x00\x01\x02text")
        write_text(root / ".notes.txt", "hidden text\n")
    with pytest.raises(CharlmError, match="no text files") as info:
        prepare_corpus(str(root))
    assert str(root) in str(info.value)


@pytest.mark.parametrize("block", [DEFAULT_CHUNK, 7, 1000])
def test_invalid_utf8_reports_byte_offset_and_line(tmp_path, monkeypatch, block):
    good = mixed_text(150).encode("utf-8")
    data = good + "more ✓ text ".encode("utf-8") + b"\xc3\x28 after the bad byte\nlast line\n"
    offset = data.index(b"\xc3\x28")
    line = data[:offset].count(b"\n") + 1
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", block)
    with pytest.raises(CharlmError) as info:
        prepare_corpus(str(path))
    message = str(info.value)
    assert str(path) in message
    assert f"byte {offset}" in message
    assert f"line {line}" in message
    assert "--encoding-errors" in message


def test_truncated_character_at_the_end_is_reported(tmp_path, monkeypatch):
    data = "ascii then ".encode("utf-8") + "日".encode("utf-8")[:2]
    path = tmp_path / "cut.txt"
    path.write_bytes(data)
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 4)
    with pytest.raises(CharlmError, match=f"byte {len(data) - 2} \\(line 1\\)"):
        prepare_corpus(str(path))


def test_encoding_errors_replace_accepts_the_same_file(tmp_path):
    text_before = mixed_text(150)
    data = text_before.encode("utf-8") + b"bad \xff\xfe bytes\n" + mixed_text(20, seed=7).encode("utf-8")
    path = tmp_path / "bad.txt"
    path.write_bytes(data)
    with pytest.raises(CharlmError):
        prepare_corpus(str(path))
    prep = prepare_corpus(str(path), encoding_errors="replace", tokenizer="char")
    text = decode_all(prep)
    assert text == data.decode("utf-8", errors="replace")
    assert "\ufffd" in text


# ---------------------------------------------------------------------------------------
# No half-written cache


def test_invalid_utf8_late_in_the_file_leaves_no_cache_folder(tmp_path, monkeypatch):
    data = mixed_text(400).encode("utf-8") + b"\xff\n"
    path = tmp_path / "late.txt"
    path.write_bytes(data)
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 1000)
    cache = tmp_path / "cache"
    with pytest.raises(CharlmError, match="UTF-8"):
        prepare_corpus(str(path), cache_root=cache)
    assert entries(cache) == []


@pytest.mark.parametrize("failure", ["file-damaged-while-encoding", "interrupted"])
def test_a_failed_encode_leaves_no_cache_folder(tmp_path, failure):
    text = mixed_text(300)
    path = write_text(tmp_path / "c.txt", text)
    cache = tmp_path / "cache"

    def on_stage(message: str) -> None:
        if message.startswith("encoding the val split"):
            if failure == "interrupted":
                raise KeyboardInterrupt
            size = path.stat().st_size
            path.write_bytes(b"\xff" * size)  # the file is overwritten while charlm reads it

    expected = KeyboardInterrupt if failure == "interrupted" else CharlmError
    with pytest.raises(expected):
        prepare_corpus(str(path), cache_root=cache, on_stage=on_stage)
    assert entries(cache) == []  # neither the final folder nor a hidden work folder

    write_text(path, text)
    prep = prepare_corpus(str(path), cache_root=cache)
    assert prep.from_cache is False and decode_all(prep) == text
    assert entries(cache) == [prep.cache_dir.name]


# ---------------------------------------------------------------------------------------
# Named corpora


def test_fetch_from_a_mirror_checks_sha256(shakespeare_mirror, isolated_data_dir):
    path = fetch(SHAKESPEARE)
    assert path == isolated_data_dir / SHAKESPEARE.filename
    assert path.read_bytes() == shakespeare_mirror.read_bytes()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHAKESPEARE.sha256
    assert sorted(os.listdir(isolated_data_dir)) == [SHAKESPEARE.filename]  # no temporary left


def test_fetch_replaces_a_damaged_local_copy(shakespeare_mirror, isolated_data_dir):
    (isolated_data_dir / SHAKESPEARE.filename).write_text("damaged\n")
    path = fetch(SHAKESPEARE)
    assert path.read_bytes() == shakespeare_mirror.read_bytes()


def test_named_shakespeare_corpus_resolves_through_the_mirror(shakespeare_mirror, isolated_data_dir):
    source = resolve_source("shakespeare")
    assert source.label == "shakespeare"
    assert source.files == [isolated_data_dir / SHAKESPEARE.filename]
    label, files, notes = resolve_default_corpus()
    assert (label, files, notes) == ("shakespeare", source.files, [])


def test_fetch_from_a_wrong_mirror_fails_and_keeps_nothing(tmp_path, monkeypatch, isolated_data_dir):
    wrong = write_text(tmp_path / "mirror" / "input.txt", "To be or not to be, but not the real file.\n")
    monkeypatch.setenv(SHAKESPEARE.url_env, wrong.as_uri())
    with pytest.raises(CharlmError, match="sha256") as info:
        fetch(SHAKESPEARE)
    assert wrong.as_uri() in str(info.value)
    assert os.listdir(isolated_data_dir) == []


def test_unreachable_default_corpus_falls_back_to_pystdlib(isolated_data_dir):
    label, files, notes = resolve_default_corpus()
    assert label == "pystdlib"
    assert files and all(p.suffix == ".py" and p.is_file() for p in files)
    assert len(notes) == 1
    assert "could not download" in notes[0] and "pystdlib" in notes[0]
    assert not (isolated_data_dir / SHAKESPEARE.filename).exists()


def test_pystdlib_is_the_python_standard_library(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so "pystdlib" cannot be taken for a path
    source = resolve_source("pystdlib")
    assert source.label == "pystdlib"
    assert all(p.suffix == ".py" and p.is_file() for p in source.files)
    assert source.files == sorted(source.files)
    assert Path(os.__file__).resolve() in {p.resolve() for p in source.files}
    assert len(source.files) > 50


def test_text_source_adds_newlines_only_between_files(tmp_path):
    a = write_text(tmp_path / "a.txt", "no newline")
    b = write_text(tmp_path / "b.txt", "ends with one\n")
    c = write_text(tmp_path / "c.txt", "last, no newline")
    source = TextSource(label="abc", files=[a, b, c])
    assert "".join(source.iter_text()) == "no newline\nends with one\nlast, no newline"
