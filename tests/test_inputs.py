"""charlm.text.inputs: the text a user hands `charlm generate` and `charlm perplexity`.

Covered here, on real files, folders and a real pipe (in this process; the commands' own
handling of the same inputs is in test_hostile_generate.py and test_perplexity.py):
  * --prompt-file: read as UTF-8, empty is fine; missing, a folder, not UTF-8 (the byte named)
    and larger than MAX_PROMPT_BYTES (/dev/zero) are each one CharlmError naming the option;
  * require_utf8: a lone surrogate (what undecodable command-line bytes become) is refused
    with its position;
  * --data - from a pipe: read whole, bad bytes refused (strict) or replaced, and a stream
    longer than the cap refused rather than read on;
  * --data FILE or FOLDER: the same text as the files, cut only at newlines;
  * --per-line: line numbers, CRLF, the final newline, --field on JSON lines (blank lines
    skipped; a line that is not an object with the field, a field that is not text, and a
    lone-surrogate escape are each refused with the line number), and no text at all.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import pytest
from helpers import write_text

from charlm.errors import CharlmError
from charlm.text import inputs
from charlm.text.inputs import (
    MAX_PROMPT_BYTES,
    read_data,
    read_data_lines,
    read_prompt_file,
    read_stdin,
    require_utf8,
)

# ---------------------------------------------------------------------------------------
# --prompt-file


def test_prompt_file_is_read_as_utf8(tmp_path):
    text = "KING:\r\nΣ café 中文 👩‍🔬\n"
    assert read_prompt_file(write_text(tmp_path / "p.txt", text)) == text  # no newline translation
    assert read_prompt_file(write_text(tmp_path / "empty.txt", "")) == ""


def test_prompt_file_problems_name_the_option_and_the_file(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(CharlmError) as info:
        read_prompt_file(missing)
    assert str(info.value) == f"--prompt-file: no such file: {missing}"
    with pytest.raises(CharlmError) as info:
        read_prompt_file(tmp_path)
    assert str(info.value) == f"--prompt-file: {tmp_path} is a folder; give a text file"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(CharlmError) as info:
        read_prompt_file(latin1)
    assert str(info.value) == f"--prompt-file: {latin1} is not UTF-8 (byte 3); convert it"


def test_prompt_file_larger_than_the_cap_is_refused_without_reading_on():
    with pytest.raises(CharlmError) as info:
        read_prompt_file(Path("/dev/zero"))  # endless: only the cap plus one byte is read
    assert str(info.value) == (
        f"--prompt-file: /dev/zero is larger than {MAX_PROMPT_BYTES >> 20} MiB, the most a prompt may be; "
        "give the end of it"
    )


def test_require_utf8_names_the_bad_character():
    require_utf8("ordinary text, 中文", "--prompt", "the prompt")
    with pytest.raises(CharlmError) as info:
        require_utf8("ab\udcffcd", "--prompt", "the prompt")
    assert str(info.value) == "--prompt: character 2 is not valid UTF-8; give the prompt as UTF-8 text"
    with pytest.raises(CharlmError, match="^--stop: character 0 "):
        require_utf8("\ud800", "--stop", "the stop text")


# ---------------------------------------------------------------------------------------
# --data -


def pipe_with(data: bytes):
    """The reading end of a real pipe, fed `data` by a thread and then closed."""
    read_fd, write_fd = os.pipe()

    def feed():
        with os.fdopen(write_fd, "wb") as end:
            end.write(data)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return os.fdopen(read_fd, "rb"), thread


def test_stdin_is_read_whole_from_a_pipe():
    text = "To be, or not to be\n" * 5000 + "Σ 中文"  # more than one pipe buffer
    stream, feeder = pipe_with(text.encode("utf-8"))
    with stream:
        assert read_data("-", "strict", stream) == [text]
    feeder.join(timeout=10)


def test_stdin_bad_bytes_are_refused_or_replaced():
    data = b"ok \xff then"
    with pytest.raises(CharlmError) as info:
        read_stdin("strict", io.BytesIO(data))
    assert str(info.value) == "stdin: byte 3 is not valid UTF-8; pass --encoding-errors replace"
    assert read_stdin("replace", io.BytesIO(data)) == "ok \ufffd then"


def test_stdin_longer_than_the_cap_is_refused(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_STDIN_BYTES", 1 << 16)  # the real cap is 1 GiB
    stream, feeder = pipe_with(b"x" * ((1 << 16) + 1))
    with stream, pytest.raises(CharlmError, match="^stdin gave more than .* the most --data - reads; save the text"):
        read_data("-", "strict", stream)
    feeder.join(timeout=10)
    assert read_stdin("strict", io.BytesIO(b"y" * (1 << 16))) == "y" * (1 << 16)  # exactly the cap is fine


# ---------------------------------------------------------------------------------------
# --data FILE or FOLDER


def test_data_file_and_folder_come_back_as_their_text_cut_at_newlines(tmp_path):
    one = "first file\nsecond line\n"
    two = "other file\n" * 3
    write_text(tmp_path / "texts" / "a.txt", one)
    write_text(tmp_path / "texts" / "b.txt", two)
    chunks = read_data(str(tmp_path / "texts" / "a.txt"), "strict")
    assert "".join(chunks) == one
    chunks = read_data(str(tmp_path / "texts"), "strict")
    joined = "".join(chunks)
    assert one in joined and two in joined and joined.index(one) < joined.index(two)  # sorted by path
    assert all(chunk.endswith("\n") for chunk in chunks[:-1])


def test_data_that_does_not_exist_names_the_option(tmp_path):
    with pytest.raises(CharlmError, match="--data"):
        read_data(str(tmp_path / "nope.txt"), "strict")


# ---------------------------------------------------------------------------------------
# --per-line and --field


def test_lines_are_numbered_and_the_final_newline_ends_the_last(tmp_path):
    path = write_text(tmp_path / "lines.txt", "one\r\n\ntwo\nthree\n")
    assert read_data_lines(str(path), None, "strict") == [(1, "one"), (2, ""), (3, "two"), (4, "three")]
    no_final = write_text(tmp_path / "no-final.txt", "one\ntwo")
    assert read_data_lines(str(no_final), None, "strict") == [(1, "one"), (2, "two")]


def test_field_reads_one_field_of_each_json_line(tmp_path):
    records = [{"text": "hello", "n": 1}, {"text": "Σ 中文"}]
    body = json.dumps(records[0]) + "\n\n" + json.dumps(records[1], ensure_ascii=False) + "\n"
    path = write_text(tmp_path / "records.jsonl", body)
    assert read_data_lines(str(path), "text", "strict") == [(1, "hello"), (3, "Σ 中文")]  # blank line 2 skipped
    stream = io.BytesIO(body.encode("utf-8"))
    assert read_data_lines("-", "text", "strict", stream) == [(1, "hello"), (3, "Σ 中文")]


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "line 2 is not a JSON object with a 'text' field; give one JSON object per line"),
        ('["text"]', "line 2 is not a JSON object with a 'text' field"),
        ('{"other": "x"}', "line 2 is not a JSON object with a 'text' field"),
        ('{"text": 5}', "line 2: field 'text' is not text"),
        ('{"text": "a\\ud800"}', "line 2: field 'text' is not valid Unicode: character 1 is U+D800, a lone surrogate"),
    ],
)
def test_bad_json_lines_are_named_by_number(tmp_path, line, message):
    path = write_text(tmp_path / "records.jsonl", '{"text": "fine"}\n' + line + "\n")
    with pytest.raises(CharlmError) as info:
        read_data_lines(str(path), "text", "strict")
    assert str(info.value).startswith(f"--data {path} {message}")
    with pytest.raises(CharlmError, match="^--data - line 2"):
        read_data_lines("-", "text", "strict", io.BytesIO(path.read_bytes()))


def test_lines_without_any_text_are_refused(tmp_path):
    for body in ("", "\n\n\n"):
        path = write_text(tmp_path / "blank.txt", body)
        with pytest.raises(CharlmError) as info:
            read_data_lines(str(path), None, "strict")
        assert str(info.value) == "nothing to score: --data has no text"
