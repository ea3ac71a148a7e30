"""Tests for charlm.text.tokenizer: the char, byte and SentencePiece tokenizers.

Covers exact round trips decode(encode(text)) == text for every kind (char fitted on the
text, byte, SentencePiece unigram and BPE trained with a small vocabulary on separate ASCII
text) over ASCII, multi-script Unicode that is not NFC (RTL, ZWJ/ZWNJ, an RTL override),
emoji sequences (ZWJ families, skin tones, flags, tag sequences), CRLF text and the empty
string, inline and on slices of the real corpora in ../shared/data; SentencePiece byte
fallback and whitespace handling; the char tokenizer's unknown id and vocabulary size; the
byte tokenizer's 1:1 mapping to UTF-8; save/load_tokenizer for every kind and CharlmError on
missing or damaged files; StreamDecoder emitting whole characters only; spm_sentences'
4000-byte limit; and token_dtype's boundaries.
"""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pytest
from helpers import shared_file

from charlm.errors import CharlmError
from charlm.text.sentencepiece import SPM_CHUNK_BYTES, SentencePieceTokenizer, spm_sentences
from charlm.text.tokenizer import (
    TOKENIZER_FILE,
    ByteTokenizer,
    CharTokenizer,
    StreamDecoder,
    build_tokenizer,
    load_tokenizer,
    token_dtype,
)

SPM_VOCAB = 400

ASCII_TEXT = (
    "It was the best of times, it was the worst of times.\n"
    "Numbers 0123456789 and punctuation: !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\n"
)
# Several scripts, decomposed (non-NFC) accents, RTL text, ZWJ/ZWNJ and an RTL override pair.
MULTISCRIPT_TEXT = (
    "English, Ελληνικά, Русский, עברית, العربية, हिन्दी, বাংলা, தமிழ், ไทย, 中文, 日本語, 한국어, ᏣᎳᎩ\n"
    "Cafe\u0301 nai\u0308ve A\u030a (combining marks, not NFC)\n"
    "ZWNJ: می\u200cخواهم  ZWJ: क्\u200dष  override: 217 \u202eA\u202c (III)\n"
    "Outside the BMP: \U00010348 \U0001d11e \U00020000\n"
)
EMOJI_TEXT = (
    "family 👩\u200d👩\u200d👧\u200d👦 skin 👍🏽 👋🏿 astronaut 🧑🏿\u200d🚀 heart ❤\ufe0f "
    "keycap 1\ufe0f\u20e3 flags 🇯🇵🇺🇦🇧🇷 Scotland 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f "
    "rainbow 🏳\ufe0f\u200d🌈\n"
)
CRLF_TEXT = "first line\r\nsecond line\r\n\r\n\tindented\r\nlone CR\rend\r\n"

INLINE_TEXTS = {
    "ascii": ASCII_TEXT,
    "multiscript": MULTISCRIPT_TEXT,
    "emoji": EMOJI_TEXT,
    "crlf": CRLF_TEXT,
    "empty": "",
}

KINDS = ["char", "byte", "spm-unigram", "spm-bpe"]

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their been has when who will more if no "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many"
).split()


def training_text(seed: int = 0, lines: int = 600) -> str:
    """ASCII prose-like lines: what the SentencePiece models are trained on."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", ",", "!", "?", ";", ""]))
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def spm_models() -> dict[str, SentencePieceTokenizer]:
    text = training_text()
    chunks = [text[i : i + 5000] for i in range(0, len(text), 5000)]
    return {
        "spm-unigram": build_tokenizer("sentencepiece", chunks, vocab_size=SPM_VOCAB, spm_model_type="unigram"),
        "spm-bpe": SentencePieceTokenizer.train(chunks, SPM_VOCAB, model_type="bpe"),
    }


def make_tokenizer(kind: str, text: str, spm_models):
    """The tokenizer of `kind`: char is fitted on `text` itself, the others ignore it."""
    if kind == "char":
        return build_tokenizer("char", [text])
    if kind == "byte":
        return build_tokenizer("byte", [text])
    return spm_models[kind]


def assert_round_trip(tok, text: str) -> np.ndarray:
    ids = tok.encode(text)
    assert isinstance(ids, np.ndarray)
    assert np.issubdtype(ids.dtype, np.integer)
    assert ids.ndim == 1
    if ids.size:
        assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size
    assert tok.decode(ids) == text
    return ids


# ---------------------------------------------------------------------------------------
# Round trips


def test_spm_models_are_real_and_small(spm_models):
    for tok in spm_models.values():
        assert tok.kind == "sentencepiece"
        assert 256 < tok.vocab_size <= SPM_VOCAB  # byte pieces plus learned pieces
        # the learned pieces are used: a common word is fewer tokens than characters
        assert len(tok.encode("the first time")) < len("the first time")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(INLINE_TEXTS))
def test_round_trip_inline(kind, name, spm_models):
    text = INLINE_TEXTS[name]
    tok = make_tokenizer(kind, text, spm_models)
    ids = assert_round_trip(tok, text)
    if not text:
        assert ids.size == 0
        assert tok.decode([]) == ""
        assert tok.decode(np.zeros(0, dtype=np.int64)) == ""


def test_inline_multiscript_text_is_really_not_nfc():
    # guards the meaning of the round-trip tests: a normalising tokenizer would fail them
    assert unicodedata.normalize("NFC", MULTISCRIPT_TEXT) != MULTISCRIPT_TEXT
    assert "\u200d" in MULTISCRIPT_TEXT and "\u200c" in MULTISCRIPT_TEXT
    assert any(ord(c) > 0xFFFF for c in EMOJI_TEXT)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_udhr_multiscript_slice(kind, spm_models):
    text = shared_file("udhr_multiscript.txt").read_text(encoding="utf-8")[:60000]
    assert unicodedata.normalize("NFC", text) != text
    tok = make_tokenizer(kind, text, spm_models)
    assert_round_trip(tok, text)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_emoji_test_slice(kind, spm_models):
    full = shared_file("emoji-test.txt").read_text(encoding="utf-8")
    start = full.index("\u200d")  # somewhere with ZWJ sequences, not just the ASCII header
    text = full[max(0, start - 20000) : start + 40000]
    assert "\u200d" in text and "\U0001f3fd" in text  # ZWJ and a skin-tone modifier
    tok = make_tokenizer(kind, text, spm_models)
    assert_round_trip(tok, text)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_crlf_cjk_slice(kind, spm_models):
    raw = shared_file("zh_sanguoyanyi.txt").read_bytes()[:90000]
    text = raw.decode("utf-8", errors="ignore")  # the cut may split the last character
    assert "\r\n" in text and "\t" in text
    tok = make_tokenizer(kind, text, spm_models)
    assert_round_trip(tok, text)


# ---------------------------------------------------------------------------------------
# SentencePiece specifics


@pytest.mark.parametrize("kind", ["spm-unigram", "spm-bpe"])
def test_spm_unseen_characters_round_trip_through_byte_fallback(kind, spm_models):
    tok = spm_models[kind]
    text = "Ünïcödé 日本語 مرحبا שלום 😀 👩\u200d👩\u200d👧 \U00020000"
    ids = assert_round_trip(tok, text)
    assert not np.any(ids == tok.unk_id)  # byte fallback, never the unknown piece
    pieces = tok.token_bytes()
    assert any(len(pieces[i]) == 1 and pieces[i][0] >= 0x80 for i in ids.tolist())  # byte pieces used


@pytest.mark.parametrize("kind", ["spm-unigram", "spm-bpe"])
@pytest.mark.parametrize(
    "text",
    [
        "   three leading spaces",
        " one leading space",
        "many      repeated     spaces",
        "trailing spaces   ",
        "\ttabs\tbetween\t\twords\t",
        "\n\nleading newlines and trailing ones\n\n\n",
        " ",
        "\n",
        "\t",
        " \t \n \t mixed \n\n  \t",
        "a\n b\n  c\n   d",
    ],
    ids=repr,
)
def test_spm_whitespace_survives(kind, text, spm_models):
    assert_round_trip(spm_models[kind], text)


@pytest.mark.parametrize("kind", ["spm-unigram", "spm-bpe"])
def test_spm_round_trips_the_whitespace_meta_symbol(kind, spm_models):
    # U+2581 LOWER ONE EIGHTH BLOCK is what SentencePiece writes for a space internally; a
    # literal one in the text (sparklines, block drawings) must not come back as a space.
    text = "load ▁▂▃▅▇ peak\n▁ at the start"
    assert_round_trip(spm_models[kind], text)


def test_spm_encoding_a_line_does_not_depend_on_the_text_before_it(spm_models):
    # corpus.py encodes a split in newline-cut chunks and relies on the result being the
    # same as encoding the whole text; "\n" is its own piece, so lines are independent.
    tok = spm_models["spm-unigram"]
    text = training_text(seed=1, lines=6000)
    lines = text.splitlines(keepends=True)
    line_by_line = np.concatenate([tok.encode(line) for line in lines])
    whole = tok.encode(text)
    assert tok.decode(whole) == text
    assert np.array_equal(whole, line_by_line)


def test_spm_training_failure_is_a_charlm_error():
    # user errors, not crashes: a vocabulary too small for the 256 byte pieces, and no text
    with pytest.raises(CharlmError, match="sentencepiece training failed") as info:
        build_tokenizer("sentencepiece", ["ab\n"], vocab_size=10)
    assert "smaller --vocab-size" not in str(info.value)  # the fix is a larger one
    with pytest.raises(CharlmError, match="sentencepiece training failed"):
        build_tokenizer("sentencepiece", [""], vocab_size=SPM_VOCAB)


def test_spm_trains_on_more_distinct_characters_than_its_vocabulary():
    # CJK text easily has more distinct characters than --vocab-size (zh_sanguoyanyi.txt has
    # 4,743 against the default 2000); with byte fallback the rare ones can be bytes.
    rng = random.Random(0)
    alphabet = [chr(0x4E00 + i * 37) for i in range(600)]
    weights = [1.0 / (rank + 1) for rank in range(len(alphabet))]  # Zipf-like frequencies
    lines = ["".join(rng.choices(alphabet, weights, k=rng.randint(10, 40))) + "\n" for _ in range(800)]
    text = "".join(lines)
    assert len(set(text)) > SPM_VOCAB
    tok = build_tokenizer("sentencepiece", [text], vocab_size=SPM_VOCAB)
    assert tok.vocab_size <= SPM_VOCAB
    assert_round_trip(tok, text)


def test_unknown_tokenizer_kind_is_a_charlm_error():
    with pytest.raises(CharlmError, match="char, byte, sentencepiece"):
        build_tokenizer("words", ["some text"])


# ---------------------------------------------------------------------------------------
# Char tokenizer


def test_char_unknown_symbol_encodes_to_zero_and_decodes_to_replacement():
    tok = CharTokenizer.fit(["abcab", "c"])
    assert tok.unk_id == 0
    assert tok.vocab_size == 4
    ids = tok.encode("abzc😀")
    assert ids.tolist()[2] == 0 and ids.tolist()[4] == 0
    assert sorted(set(ids.tolist()) - {0}) == [1, 2, 3]  # known chars get distinct ids >= 1
    assert tok.decode(ids) == "ab\ufffdc\ufffd"


@pytest.mark.parametrize("name", ["ascii", "multiscript", "emoji", "crlf"])
def test_char_vocab_is_distinct_code_points_plus_one(name):
    text = INLINE_TEXTS[name]
    tok = build_tokenizer("char", [text[: len(text) // 2], text[len(text) // 2 :]])
    assert tok.vocab_size == len(set(text)) + 1
    ids = tok.encode(text)
    assert not np.any(ids == 0)
    assert len(np.unique(ids)) == len(set(text))
    assert len(ids) == len(text)  # one id per code point


def test_char_encode_is_a_numpy_integer_array():
    tok = CharTokenizer.fit(["hello"])
    ids = tok.encode("hello world")
    assert isinstance(ids, np.ndarray)
    assert np.issubdtype(ids.dtype, np.unsignedinteger) or np.issubdtype(ids.dtype, np.signedinteger)
    assert ids.shape == (11,)


@pytest.mark.parametrize("distinct", [255, 256, 65535, 65536])
def test_char_ids_fit_their_dtype_at_the_boundaries(distinct):
    # vocab = distinct + 1; the largest id must not wrap around in the encode table's dtype
    valid = (cp for cp in range(0x20, 0x10FFFF) if not 0xD800 <= cp <= 0xDFFF)  # no surrogates
    chars = "".join(chr(cp) for _, cp in zip(range(distinct), valid, strict=False))
    tok = CharTokenizer.fit([chars])
    assert tok.vocab_size == distinct + 1
    ids = tok.encode(chars)
    assert int(ids.max()) == distinct
    assert len(np.unique(ids)) == distinct
    assert tok.decode(ids) == chars


def test_char_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.fit(["abc"])
    with pytest.raises(CharlmError):
        tok.decode([1, 4])
    with pytest.raises(CharlmError):
        tok.decode([-1])


# ---------------------------------------------------------------------------------------
# Byte tokenizer


@pytest.mark.parametrize("name", list(INLINE_TEXTS))
def test_byte_tokenizer_is_utf8(name):
    text = INLINE_TEXTS[name]
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    assert tok.unk_id is None
    ids = tok.encode(text)
    assert isinstance(ids, np.ndarray) and np.issubdtype(ids.dtype, np.integer)
    assert len(ids) == len(text.encode("utf-8"))
    assert ids.tolist() == list(text.encode("utf-8"))


def test_byte_decode_rejects_out_of_range_ids():
    with pytest.raises(CharlmError):
        ByteTokenizer().decode([65, 256])


# ---------------------------------------------------------------------------------------
# Save and load


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_encodes(kind, spm_models, tmp_path):
    fit_text = ASCII_TEXT + MULTISCRIPT_TEXT
    tok = make_tokenizer(kind, fit_text, spm_models)
    run = tmp_path / "run"
    run.mkdir()
    tok.save(run)
    assert (run / TOKENIZER_FILE).is_file()
    loaded = load_tokenizer(str(run))
    assert loaded.kind == tok.kind
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.unk_id == tok.unk_id
    for text in (fit_text, EMOJI_TEXT, CRLF_TEXT, "unseen: ∑ ☃ \U0001f600"):
        assert np.array_equal(loaded.encode(text), tok.encode(text))
        assert loaded.decode(loaded.encode(text)) == tok.decode(tok.encode(text))
    assert loaded.token_bytes() == tok.token_bytes()


def test_load_missing_tokenizer_is_a_charlm_error(tmp_path):
    with pytest.raises(CharlmError, match="missing"):
        load_tokenizer(tmp_path)
    with pytest.raises(CharlmError):
        load_tokenizer(tmp_path / "no-such-run")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b'{"kind": "char", "version": 1, "code_po',
        b"[1, 2, 3]",
        b'{"kind": "char", "version": 99, "code_points": [97]}',
        b'{"kind": "words", "version": 1}',
        b'{"kind": "char", "version": 1, "code_points": [1114112]}',
        b'{"kind": "char", "version": 1, "code_points": [-5]}',
        b'{"kind": "char", "version": 1, "code_points": "abc"}',
        b'{"kind": "char", "version": 1, "code_points": [null]}',
        b'{"kind": "char", "version": 1, "code_points": [100000000000000000000]}',
        b'{"kind": "sentencepiece", "version": 1, "model_file": "."}',
    ],
    ids=[
        "empty",
        "binary",
        "truncated",
        "not-an-object",
        "wrong-version",
        "unknown-kind",
        "code-point-too-large",
        "negative-code-point",
        "code-points-string",
        "code-points-null",
        "code-point-huge",
        "spm-model-file-is-a-folder",
    ],
)
def test_load_damaged_tokenizer_json_is_a_charlm_error(content, tmp_path):
    (tmp_path / TOKENIZER_FILE).write_bytes(content)
    with pytest.raises(CharlmError):
        load_tokenizer(tmp_path)


def test_load_damaged_or_missing_spm_model_is_a_charlm_error(spm_models, tmp_path):
    spm_models["spm-unigram"].save(tmp_path)
    model = tmp_path / json.loads((tmp_path / TOKENIZER_FILE).read_text())["model_file"]
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 3])  # truncated
    with pytest.raises(CharlmError):
        load_tokenizer(tmp_path)
    model.write_bytes(b"not a sentencepiece model at all")
    with pytest.raises(CharlmError):
        load_tokenizer(tmp_path)
    model.unlink()
    with pytest.raises(CharlmError, match="missing"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------
# StreamDecoder


@pytest.mark.parametrize("kind", KINDS)
def test_stream_decoder_emits_whole_characters_only(kind, spm_models):
    text = EMOJI_TEXT + MULTISCRIPT_TEXT + "tail without newline 👍🏽"
    tok = make_tokenizer(kind, text, spm_models)
    ids = tok.encode(text)
    if kind == "byte":
        assert len(ids) > len(text)  # multi-byte characters really span several ids
    decoder = StreamDecoder(tok)
    emitted = ""
    for token_id in ids.tolist():
        piece = decoder.push(int(token_id))
        assert "\ufffd" not in piece
        emitted += piece
        assert text.startswith(emitted)  # never a partial character, never ahead of the text
    emitted += decoder.flush()
    assert emitted == text


def test_stream_decoder_holds_back_an_unfinished_character():
    tok = ByteTokenizer()
    decoder = StreamDecoder(tok)
    euro = "€".encode("utf-8")  # 3 bytes
    assert decoder.push(euro[0]) == ""
    assert decoder.push(euro[1]) == ""
    assert decoder.push(euro[2]) == "€"
    # a character cut short at the end is reported once, on flush
    assert decoder.push(euro[0]) == ""
    assert decoder.flush() == "\ufffd"


def test_stream_decoder_on_real_emoji_text():
    text = shared_file("emoji-test.txt").read_text(encoding="utf-8")[:30000]
    tok = ByteTokenizer()
    decoder = StreamDecoder(tok)
    parts = [decoder.push(int(i)) for i in tok.encode(text).tolist()]
    parts.append(decoder.flush())
    assert "".join(parts) == text
    assert not any("\ufffd" in part for part in parts)


# ---------------------------------------------------------------------------------------
# spm_sentences


def _check_sentences(pieces: list[str], original: str) -> None:
    assert "".join(pieces) == original
    assert all(pieces), "no empty pieces"
    sizes = [len(p.encode("utf-8")) for p in pieces]
    assert max(sizes) <= SPM_CHUNK_BYTES == 4000


def test_spm_sentences_cut_a_long_cjk_line():
    line = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(6000))  # 18,000 bytes, no newline
    assert len(line.encode("utf-8")) == 18000
    pieces = list(spm_sentences([line]))
    _check_sentences(pieces, line)
    assert len(pieces) >= 5


def test_spm_sentences_cut_a_long_line_of_four_byte_characters_in_chunks():
    line = "😀🇯🇵" * 3000  # 4-byte code points, 24,000 bytes
    text = "short first line\n" + line + "\nshort last line"
    chunks = [text[i : i + 777] for i in range(0, len(text), 777)]
    _check_sentences(list(spm_sentences(chunks)), text)


def test_spm_sentences_group_normal_text_at_newlines():
    text = training_text(seed=2, lines=800)
    assert len(text.encode("utf-8")) > 3 * SPM_CHUNK_BYTES
    pieces = list(spm_sentences([text]))
    _check_sentences(pieces, text)
    assert len(pieces) > 1
    assert all(p.endswith("\n") for p in pieces)  # short lines: every cut is after a newline


def test_spm_sentences_on_real_cjk_crlf_text():
    text = shared_file("zh_sanguoyanyi.txt").read_text(encoding="utf-8")[:120000]
    chunks = [text[i : i + 10007] for i in range(0, len(text), 10007)]
    _check_sentences(list(spm_sentences(chunks)), text)


# ---------------------------------------------------------------------------------------
# token_dtype


@pytest.mark.parametrize(
    "vocab, dtype",
    [
        (1, np.uint8),
        (256, np.uint8),
        (257, np.uint16),
        (65536, np.uint16),
        (65537, np.uint32),
        (0x110000 + 1, np.uint32),
    ],
)
def test_token_dtype_boundaries(vocab, dtype):
    got = token_dtype(vocab)
    assert got == np.dtype(dtype)
    assert np.iinfo(got).max >= vocab - 1  # the largest id fits
