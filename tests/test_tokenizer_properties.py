"""Property-based tests (hypothesis) of every tokenizer kind over arbitrary Unicode text.

Owns the round-trip properties of charlm.text.tokenizer (and of the UTF-8 guard in charlm.inference.utf8
that generation puts in front of byte-level tokens):

- char: fitted on a text, decode(encode(t)) == t; an unseen character is exactly one
  unknown id (0) and decodes to U+FFFD; saved and loaded back it encodes identically.
- byte: decode(encode(t)) == t and the ids are exactly t's UTF-8 bytes.
- sentencepiece, unigram and BPE, each trained once (real training, vocabulary 300, on a
  multi-script text this module writes): decode(encode(t)) == t for any text, with
  characters never seen in training (byte fallback), newlines, runs of spaces, leading
  spaces and a literal U+2581; saved and loaded back it gives the same ids.
- every kind: StreamDecoder fed one id at a time gives exactly decode(ids) once flushed,
  for any ids; token_bytes() over encode(t) spell t's UTF-8 (char: with U+FFFD for unseen
  characters); encoding in chunks cut at newlines, as corpus.py does, gives the ids of the
  whole text (char and byte: cut anywhere).
- the UTF-8 guard (charlm.inference.utf8) allows exactly the byte sequences Python decodes, and never
  forbids the ids encode gives for a text (so every text can be generated).
- a str holding a lone surrogate is refused by every kind with a CharlmError, also from the
  CLI (an argument with bytes that are not UTF-8, a JSON \\ud800 escape).

Texts come from st.text(), whose default alphabet is every code point that has a UTF-8
form (astral planes, combining marks, controls included) and so leaves out the surrogates
U+D800..U+DFFF: a Python str can hold those, but they are not Unicode text. Mixed in are
strings the tokenizers treat specially: "\\n", "\\r\\n", runs of spaces, U+2581, U+FFFD,
SentencePiece's piece names. Examples are capped so this file runs in about ten seconds.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, assert_user_error, child_env, invoke, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlm.errors import CharlmError
from charlm.inference.utf8 import REJECT, Utf8Guard, transition_table
from charlm.text.sources import newline_chunks
from charlm.text.tokenizer import (
    TOKENIZER_FILE,
    ByteTokenizer,
    CharTokenizer,
    StreamDecoder,
    build_tokenizer,
    load_tokenizer,
)

SPM_VOCAB = 300  # just above the 260 that byte fallback and the reserved pieces need

# The autouse fixtures of conftest.py (one torch thread, a private data folder) are
# function-scoped; they hold nothing that one example could leave behind for the next.
# too_slow: other test runs may share the two cores; timing is not what is tested here.
PROPERTY = settings(
    deadline=None,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SPECIAL = [
    "\n", "\r\n", "\r", "\t", " ", "  ", "     ", "\u2581", "\u2581\u2581", "\ufffd",
    "e\u0301", "\u0301", "\u200d", "\x00", "\x7f", "\x85", "\u2028", "\ufeff", "\u3000", "\xa0",
    "\U0001f600", "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\U000e0067", "\U0010ffff",
    "<unk>", "<0x41>", "<s>", " \u2047 ", "\u0627\u0644", "\u4e2d",
]  # fmt: skip
_pieces = st.one_of(st.characters(codec="utf-8"), st.sampled_from(SPECIAL))
TEXTS = st.one_of(st.text(), st.lists(_pieces, max_size=40).map("".join))
# whitespace-heavy text: where SentencePiece's defaults would lose something
SPACES = st.lists(st.sampled_from([" ", "  ", "\n", "\r\n", "\t", "\u2581", "a", "\u00e9", "\U0001f600"]),
                  max_size=30).map("".join)  # fmt: skip
ANY_TEXT = st.one_of(TEXTS, SPACES)

KINDS = ["char", "byte", "spm-unigram", "spm-bpe"]
SPM_KINDS = ["spm-unigram", "spm-bpe"]

TRAINING_TEXT = (
    "It was the best of times, it was the worst of times; the age of wisdom.\n"
    "  Two leading spaces, and  double  spaces inside.\n"
    "Ελληνικά: η γρήγορη καφέ αλεπού πηδά.\tРусский: съешь же ещё этих булок.\n"
    "中文文本，日本語のテキスト。한국어 문장.\r\n"
    "العربية مكتوبة هنا؛ עברית כתובה כאן.\n"
) * 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Real SentencePiece models trained once from a file this module writes, a char
    tokenizer fitted on the same file, and their saved-and-loaded twins."""
    folder = tmp_path_factory.mktemp("tokenizer-properties")
    corpus = folder / "corpus.txt"
    corpus.write_text(TRAINING_TEXT, encoding="utf-8")
    read = lambda: [corpus.read_text(encoding="utf-8")]  # noqa: E731 - a fresh pass each call
    toks = {
        "char": build_tokenizer("char", read),
        "byte": build_tokenizer("byte", read),
        "spm-unigram": build_tokenizer("sentencepiece", read, vocab_size=SPM_VOCAB, spm_model_type="unigram"),
        "spm-bpe": build_tokenizer("sentencepiece", read, vocab_size=SPM_VOCAB, spm_model_type="bpe"),
    }
    loaded = {}
    for kind, tok in toks.items():
        (folder / kind).mkdir()
        tok.save(folder / kind)
        loaded[kind] = load_tokenizer(folder / kind)
    bytes_of = {kind: tok.token_bytes() for kind, tok in toks.items()}
    return {"tok": toks, "loaded": loaded, "bytes": bytes_of}


def fitted_on(text: str) -> CharTokenizer:
    return build_tokenizer("char", [text])


def tokenizer_for(kind: str, text: str, trained: dict):
    """The tokenizer of `kind` that knows every character of text (char is fitted on it)."""
    return fitted_on(text) if kind == "char" else trained["tok"][kind]


def assert_ids(tok, ids: np.ndarray) -> list[int]:
    assert isinstance(ids, np.ndarray) and ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer)
    values = ids.tolist()
    assert all(0 <= i < tok.vocab_size for i in values)
    return values


def cut(text: str, positions: list[int]) -> list[str]:
    """text cut at the given character positions (any order, repeats allowed)."""
    bounds = [0, *sorted({p % (len(text) + 1) for p in positions}), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def streamed(tok, ids: list[int]) -> tuple[list[str], str]:
    """What StreamDecoder emits for each id, and what flush gives at the end."""
    decoder = StreamDecoder(tok)
    return [decoder.push(i) for i in ids], decoder.flush()


# ---------------------------------------------------------------------------------------
# char


@PROPERTY
@given(text=ANY_TEXT, cuts=st.lists(st.integers(min_value=0), max_size=5))
def test_char_round_trips_the_text_it_was_fitted_on(text, cuts):
    tok = fitted_on(text)
    # fitting on the text in pieces sees the same characters as fitting on it whole
    assert tok.code_points.tolist() == sorted({ord(c) for c in text})
    assert CharTokenizer.fit(cut(text, cuts)).code_points.tolist() == tok.code_points.tolist()
    assert tok.vocab_size == len(set(text)) + 1
    ids = assert_ids(tok, tok.encode(text))
    assert len(ids) == len(text)  # one id per code point
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


@PROPERTY
@given(data=st.data(), seen=st.text(min_size=1))
def test_char_unseen_character_is_one_unknown_id_decoding_to_replacement(data, seen):
    tok = fitted_on(seen)
    known = set(seen)
    # text mixing seen characters with arbitrary (mostly unseen) ones
    text = data.draw(st.lists(st.one_of(st.sampled_from(sorted(known)), _pieces), max_size=40).map("".join))
    ids = assert_ids(tok, tok.encode(text))
    assert len(ids) == len(text)
    assert [i == 0 for i in ids] == [c not in known for c in text]
    assert tok.decode(ids) == "".join(c if c in known else "\ufffd" for c in text)


@PROPERTY
@given(seen=ANY_TEXT.filter(bool), text=ANY_TEXT)
def test_char_saved_and_loaded_encodes_identically(seen, text):
    # seen is not empty: load_tokenizer refuses an empty char vocabulary, which no run has
    # (training refuses an empty corpus)
    tok = fitted_on(seen)
    with tempfile.TemporaryDirectory() as folder:
        tok.save(Path(folder))
        again = load_tokenizer(folder)
    assert again.kind == "char" and again.vocab_size == tok.vocab_size
    assert again.encode(seen).tolist() == tok.encode(seen).tolist()
    assert again.encode(text).tolist() == tok.encode(text).tolist()
    assert again.decode(tok.encode(text)) == tok.decode(tok.encode(text))


# ---------------------------------------------------------------------------------------
# byte


@PROPERTY
@given(text=ANY_TEXT)
def test_byte_ids_are_the_utf8_bytes_and_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.uint8
    assert ids.tobytes() == text.encode("utf-8")
    assert tok.decode(ids) == text


# ---------------------------------------------------------------------------------------
# sentencepiece


def test_spm_models_are_real_and_byte_fallback(trained):
    """What the properties below stand on: two different real models, vocabulary near 300,
    with byte pieces, that have learned multi-character pieces from the training text."""
    unigram, bpe = trained["tok"]["spm-unigram"], trained["tok"]["spm-bpe"]
    assert unigram.model_proto != bpe.model_proto
    for tok in (unigram, bpe):
        assert 260 < tok.vocab_size <= SPM_VOCAB
        assert len(tok.encode("It was the best of times")) < len("It was the best of times")
        assert len(tok.encode("\U0001f600")) == 4  # never seen: four byte pieces
        # pieces span characters, so where a text is cut matters: the chunking properties
        # below hold because the cuts are at newlines, not by accident
        whole = tok.encode("It was the best of times").tolist()
        assert tok.encode("It was the be").tolist() + tok.encode("st of times").tolist() != whole


@pytest.mark.parametrize("kind", SPM_KINDS)
@PROPERTY
@given(text=ANY_TEXT)
def test_spm_round_trips_any_text(kind, trained, text):
    tok = trained["tok"][kind]
    ids = assert_ids(tok, tok.encode(text))
    assert tok.unk_id not in ids  # byte fallback: nothing is ever unknown
    assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", SPM_KINDS)
@PROPERTY
@given(lead=st.sampled_from(["", " ", "  ", "\n", " \n ", "\u2581", " \u2581"]), text=ANY_TEXT)
def test_spm_keeps_leading_spaces_newlines_and_the_space_mark(kind, trained, lead, text):
    tok = trained["tok"][kind]
    assert tok.decode(tok.encode(lead + text)) == lead + text
    assert tok.decode(tok.encode(text + lead)) == text + lead


@pytest.mark.parametrize("kind", SPM_KINDS)
@PROPERTY
@given(text=ANY_TEXT)
def test_spm_saved_and_loaded_gives_the_same_ids(kind, trained, text):
    tok, again = trained["tok"][kind], trained["loaded"][kind]
    assert again.kind == "sentencepiece" and again.model_proto == tok.model_proto
    ids = tok.encode(text).tolist()
    assert again.encode(text).tolist() == ids
    assert again.decode(ids) == text


# ---------------------------------------------------------------------------------------
# every kind: streaming decoder, token bytes, chunked encoding


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(data=st.data())
def test_stream_decoder_gives_decode_of_any_ids(kind, trained, data):
    """Any ids at all, also ones that spell broken UTF-8 or the unknown id: what generation
    streams (StreamDecoder) is what decode gives. generate.py does not flush (a character
    cut short at the end of a sample is dropped), so flush adds at most one U+FFFD."""
    tok = trained["tok"][kind]
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=40))
    pieces, tail = streamed(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids)
    assert tail in ("", "\ufffd")
    expected = b"".join(trained["bytes"][kind][i] for i in ids).decode("utf-8", errors="replace")
    assert tok.decode(ids) == expected


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(text=ANY_TEXT)
def test_stream_decoder_on_encoded_text_emits_whole_characters_in_order(kind, trained, text):
    tok = tokenizer_for(kind, text, trained)
    pieces, tail = streamed(tok, tok.encode(text).tolist())
    emitted = ""
    for piece in pieces:
        emitted += piece
        assert text.startswith(emitted)  # never a partial or replaced character, never ahead
    assert tail == ""
    assert emitted == text


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(data=st.data())
def test_stream_decoder_refuses_ids_outside_the_vocabulary(kind, trained, data):
    tok = trained["tok"][kind]
    bad = data.draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=tok.vocab_size)))
    with pytest.raises(CharlmError, match="out of range"):
        StreamDecoder(tok).push(bad)
    with pytest.raises(CharlmError, match="out of range"):
        tok.decode([bad])


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(text=ANY_TEXT)
def test_token_bytes_spell_the_utf8_of_the_text(kind, trained, text):
    """Holds for byte and sentencepiece on any text, and for char on text it has seen."""
    tok = tokenizer_for(kind, text, trained)
    table = trained["bytes"][kind] if kind != "char" else tok.token_bytes()
    assert len(table) == tok.vocab_size
    assert b"".join(table[i] for i in tok.encode(text).tolist()) == text.encode("utf-8")


@PROPERTY
@given(seen=st.text(min_size=1), text=ANY_TEXT)
def test_char_token_bytes_spell_replacement_for_unseen_characters(seen, text):
    """Where the token-bytes property does not hold as is: an unseen character is the
    unknown id, whose bytes are U+FFFD's, not the character's."""
    tok = fitted_on(seen)
    table = tok.token_bytes()
    expected = "".join(c if c in set(seen) else "\ufffd" for c in text)
    assert b"".join(table[i] for i in tok.encode(text).tolist()) == expected.encode("utf-8")


@pytest.mark.parametrize("kind", ["char", "byte"])
@PROPERTY
@given(text=ANY_TEXT, cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_char_and_byte_encode_the_same_cut_anywhere(kind, trained, text, cuts):
    tok = tokenizer_for(kind, text, trained)
    whole = tok.encode(text).tolist()
    assert [i for chunk in cut(text, cuts) for i in tok.encode(chunk).tolist()] == whole


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(text=ANY_TEXT, cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_encoding_newline_chunks_as_the_corpus_does_gives_the_whole_texts_ids(kind, trained, text, cuts):
    """corpus.py regroups the chunks it reads with newline_chunks and encodes each; the
    SentencePiece tokenizer encodes line by line so that this gives the ids of the whole.
    (A line over newline_chunks' limit, 4 Mi characters, is cut inside and may encode
    differently with SentencePiece: the claim is for cuts at newlines only.)"""
    tok = tokenizer_for(kind, text, trained)
    chunks = list(newline_chunks(iter(cut(text, cuts))))
    assert "".join(chunks) == text
    assert all(chunk.endswith("\n") for chunk in chunks[:-1])
    assert [i for chunk in chunks for i in tok.encode(chunk).tolist()] == tok.encode(text).tolist()


@pytest.mark.parametrize("kind", SPM_KINDS)
@PROPERTY
@given(lines=st.lists(ANY_TEXT, min_size=1, max_size=5), keep=st.lists(st.booleans(), min_size=5, max_size=5))
def test_spm_encodes_each_line_on_its_own(kind, trained, lines, keep):
    """Cut after any subset of the newlines, the pieces encode to the ids of the whole."""
    tok = trained["tok"][kind]
    text = "\n".join(lines)
    chunks, current = [], ""
    for index, line in enumerate(lines):
        current += line + ("\n" if index < len(lines) - 1 else "")
        if index < len(lines) - 1 and keep[index]:
            chunks.append(current)
            current = ""
    chunks.append(current)
    assert "".join(chunks) == text
    assert [i for chunk in chunks for i in tok.encode(chunk).tolist()] == tok.encode(text).tolist()


# ---------------------------------------------------------------------------------------
# the UTF-8 guard generation puts in front of byte-level tokens


def _walk(table: torch.Tensor, ids: list[int]) -> int:
    state = 0
    for i in ids:
        state = int(table[state, i])
        if state == REJECT:
            return REJECT
    return state


def _valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# the bytes where UTF-8's rules change (continuation ranges, overlong and surrogate leads)
EDGE_BYTES = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF,
              0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF]  # fmt: skip
BYTE_STRINGS = st.one_of(
    st.binary(max_size=12),
    st.lists(st.sampled_from(EDGE_BYTES), max_size=6).map(bytes),
    TEXTS.map(lambda t: t.encode("utf-8")),
    st.tuples(TEXTS, st.integers(min_value=0)).map(lambda p: p[0].encode("utf-8")[: p[1] % (len(p[0].encode()) + 1)]),
    st.tuples(TEXTS, st.binary(min_size=1, max_size=2)).map(lambda p: p[0].encode("utf-8") + p[1]),
)


@settings(PROPERTY, max_examples=150)
@given(data=BYTE_STRINGS)
def test_utf8_guard_accepts_exactly_the_valid_utf8(data):
    """Byte by byte, the guard's mask allows a sequence to its end, back between
    characters, exactly when Python's strict decoder takes it."""
    guard = Utf8Guard(ByteTokenizer().token_bytes(), torch.device("cpu"))
    states = guard.initial(1)
    allowed = True
    for byte in data:
        if bool(guard.mask(states)[0, byte]):
            allowed = False
            break
        states = guard.advance(states, torch.tensor([byte]))
    assert (allowed and int(states[0]) == 0) == _valid(data)


def test_utf8_guard_table_matches_python_on_every_edge_sequence():
    """Exhaustive where sampling is thin: every sequence of up to three edge bytes, and
    every edge lead byte followed by three bytes around the continuation range."""
    table = transition_table(ByteTokenizer().token_bytes()).tolist()

    def walk(data: bytes) -> int:
        state = 0
        for byte in data:
            state = table[state][byte]
            if state == REJECT:
                break
        return state

    around = [0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0]
    sequences = [bytes(p) for n in (1, 2, 3) for p in itertools.product(EDGE_BYTES, repeat=n)]
    sequences += [bytes((lead, *rest)) for lead in EDGE_BYTES for rest in itertools.product(around, repeat=3)]
    wrong = [data.hex() for data in sequences if (walk(data) == 0) != _valid(data)]
    assert wrong == []


@pytest.fixture(scope="module")
def guard_tables(trained) -> dict:
    return {kind: transition_table(trained["bytes"][kind]) for kind in ("byte", *SPM_KINDS)}


@pytest.mark.parametrize("kind", ["byte", *SPM_KINDS])
@PROPERTY
@given(text=ANY_TEXT)
def test_utf8_guard_never_forbids_what_encode_gives(kind, trained, guard_tables, text):
    """Every text can be generated: its own ids pass the guard and end between characters."""
    assert _walk(guard_tables[kind], trained["tok"][kind].encode(text).tolist()) == 0


# ---------------------------------------------------------------------------------------
# lone surrogates: a str that is not Unicode text


@pytest.mark.parametrize("kind", KINDS)
@PROPERTY
@given(before=TEXTS, surrogate=st.characters(categories=["Cs"]), after=TEXTS)
def test_lone_surrogate_is_refused_naming_where(kind, trained, before, surrogate, after):
    tok = trained["tok"][kind]
    text = before + surrogate + after
    with pytest.raises(CharlmError, match=f"character {len(before)} is U\\+{ord(surrogate):04X}, a lone surrogate"):
        tok.encode(text)


def test_char_fit_and_load_refuse_surrogates(tmp_path):
    with pytest.raises(CharlmError, match="lone surrogate"):
        CharTokenizer.fit(["abc", "d\udcffe"])
    (tmp_path / TOKENIZER_FILE).write_text(json.dumps({"kind": "char", "version": 1, "code_points": [97, 0xDC80]}))
    with pytest.raises(CharlmError, match="invalid (vocabulary|code point)"):
        load_tokenizer(tmp_path)


@pytest.fixture(scope="module")
def spm_run(tmp_path_factory) -> Path:
    """A real, tiny SentencePiece run trained through the CLI."""
    folder = tmp_path_factory.mktemp("spm-run")
    corpus = folder / "corpus.txt"
    corpus.write_text(TRAINING_TEXT, encoding="utf-8")
    run = folder / "run"
    result = invoke(
        "train", "-d", str(corpus), "--out", str(run), "--tokenizer", "sentencepiece", "--vocab-size",
        str(SPM_VOCAB), *TINY, "--max-steps", "2", env={"CHARLM_DATA_DIR": str(folder / "data")},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
def test_generate_prompt_with_bytes_that_are_not_utf8_is_a_clear_error(spm_run):
    """A real process: argv bytes that are not UTF-8 reach Python as lone surrogates (this
    was the prompt echoed to stdout, then a TypeError traceback from sentencepiece)."""
    # subprocess takes bytes arguments on POSIX: these reach charlm exactly as typed
    prompt = b"ab\xffcd"
    args = ["generate", str(spm_run), "--prompt", prompt, "--max-tokens", "5"]
    done = run_cli(*args, env=child_env())  # type: ignore[arg-type]
    error = assert_user_error(done)
    assert error == "charlm: error: --prompt: character 2 is not valid UTF-8; give the prompt as UTF-8 text"


def test_perplexity_json_line_with_a_surrogate_escape_is_a_clear_error(spm_run, tmp_path):
    lines = tmp_path / "lines.jsonl"
    lines.write_text('{"text": "fine"}\n{"text": "bad \\udc80 escape"}\n', encoding="utf-8")
    result = invoke("perplexity", str(spm_run), "--data", str(lines), "--per-line", "--field", "text")
    error = assert_user_error(result, alone=False)
    assert "character 4 is U+DC80, a lone surrogate" in error
