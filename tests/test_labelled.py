"""charlm.text.labelled: reading labelled text for `charlm classify`, and the train/val/test split.

Covered here, on small files each test writes, then on the four real data sets beside the checkout:
  * every format reads the right texts and labels: CSV and TSV with a header (default and explicit
    fields, quoted newlines, a BOM, CRLF), headerless label<TAB>text, JSON lines (int, bool and
    float labels), fastText, TREC, a folder of class folders, a folder or list of class files
    (stem or suffix labels, README / orig_* skipped), a folder of one data file; U+0085 is no
    line break; bad UTF-8 refused with its byte, or replaced;
  * every user error is one CharlmError line naming the problem: missing fields (the fields found
    listed), no such path, empty file, one class, empty texts, a regression-like label column,
    mixed folders, binary files, a file over the size cap, a pipe;
  * read_unlabelled: lines, a CSV column, a JSON-lines field, standard input;
  * split_labelled: the same seed gives the same split (whatever the input order), another seed
    another; each class's shares within one example; no text in two splits however many duplicates
    and conflicting labels; given val/test sets kept as they are, overlap counted, unknown labels
    dropped; bad fractions, classes too small, a class left without training examples.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest
from helpers import SHARED_DATA, write_text

from charlm.errors import CharlmError, OptionError
from charlm.text.labelled import (
    LabelledTexts,
    label_order,
    read_labelled,
    read_unlabelled,
    split_labelled,
)

CLASSIFY = SHARED_DATA / "classify"


def error_of(call, *args, **kwargs) -> str:
    """The message of the CharlmError call(*args) raises; it must be one line."""
    with pytest.raises(CharlmError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    return message


def shared(name: str) -> Path:
    path = CLASSIFY / name
    if not path.exists():
        pytest.skip(f"the labelled data {name} is not in {CLASSIFY} (it sits beside the checkout in CI)")
    return path


# ---------------------------------------------------------------------------------------
# Formats


def test_csv_with_default_fields_quoted_newlines_bom_and_crlf(tmp_path):
    path = write_text(
        tmp_path / "reviews.csv",
        '\ufeffid,Sentence,Label\r\n1,"good, really\r\ngood",pos\r\n2,bad film,neg\r\n3,"said ""meh""", neg \r\n',
    )
    data = read_labelled(path)
    assert data.texts == ["good, really\r\ngood", "bad film", 'said "meh"']
    assert data.labels == ["pos", "neg", "neg"]
    assert data.source == str(path) and data.format == "CSV with a header row"


def test_explicit_fields_and_the_missing_field_message(tmp_path):
    path = write_text(tmp_path / "reviews.csv", "id,sentence,polarity\n1,fine,up\n2,awful,down\n")
    data = read_labelled(path, text_field="sentence", label_field="POLARITY")  # any case
    assert (data.texts, data.labels) == (["fine", "awful"], ["up", "down"])
    message = error_of(read_labelled, path, text_field="body", label_field="polarity")
    assert message == (
        f"{path} has no text field 'body'; its columns are: id, sentence, polarity (choose one with --text-field)"
    )
    message = error_of(read_labelled, path)  # no default label field among the columns
    assert "has no label field (none of label, labels, class" in message and "--label-field" in message
    assert "text and label fields are both" in error_of(read_labelled, path, "sentence", "sentence")


def test_tsv_with_a_header_and_unpaired_quotes(tmp_path):
    path = write_text(tmp_path / "a.tsv", 'text\tlabel\n"hello" there\tx\nsay "no\ty\n"a ""b"""\t"x"\n')
    data = read_labelled(path)
    assert data.texts == ['"hello" there', 'say "no', 'a "b"'] and data.labels == ["x", "y", "x"]
    assert data.format == "TSV with a header row"
    quoted = write_text(tmp_path / "b.tsv", 'text\tlabel\n"two\nlines"\tx\n"tab\there"\ty\n')
    assert read_labelled(quoted).texts == ["two\nlines", "tab\there"]  # quoting, where the tabs need it


@pytest.mark.parametrize("name", ["spam", "spam.txt", "spam.tsv"])
def test_headerless_label_tab_text(tmp_path, name):
    path = write_text(tmp_path / name, "ham\tsee you at 5\r\n\nspam\tWIN a prize\tnow\nham\tok\n")
    data = read_labelled(path)
    assert data.texts == ["see you at 5", "WIN a prize\tnow", "ok"] and data.labels == ["ham", "spam", "ham"]
    assert data.format == "label<TAB>text lines"


def test_json_lines_labels_of_every_type(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": True}, {"text": "c", "label": 2.0}]
    rows += [{"text": "d", "label": "pos "}, {"text": "e", "label": 3.5}]
    for name in ("data.jsonl", "data.ndjson", "data"):  # the last is found by its content
        path = write_text(tmp_path / name, "\n".join(json.dumps(r) for r in rows) + "\n\n")
        data = read_labelled(path)
        assert data.texts == list("abcde") and data.labels == ["1", "true", "2", "pos", "3.5"]
        assert data.format == "JSON lines"
    path = write_text(tmp_path / "msg.jsonl", '{"body": "x", "tag": "a"}\n{"body": "y", "tag": "b"}\n')
    assert read_labelled(path, text_field="body", label_field="tag").labels == ["a", "b"]
    assert "its fields are: body, tag" in error_of(read_labelled, path, label_field="tag")


def test_fasttext_keeps_the_first_label(tmp_path):
    path = write_text(tmp_path / "ft.txt", "__label__sports __label__news Cup final tonight\n__label__tech  new chip\n")
    data = read_labelled(path)
    assert data.texts == ["Cup final tonight", "new chip"] and data.labels == ["sports", "tech"]
    assert any("1 extra __label__ prefixes dropped" in note for note in data.notes)


@pytest.mark.parametrize("name", ["q.label", "questions.txt"])
def test_trec_keeps_the_coarse_label(tmp_path, name):
    path = write_text(tmp_path / name, "NUM:date When was it ?\nHUM:ind Who is he ?\nNUM:count How many ?\n")
    data = read_labelled(path)
    assert data.texts == ["When was it ?", "Who is he ?", "How many ?"] and data.labels == ["NUM", "HUM", "NUM"]
    assert any("3 fine labels after it dropped" in note for note in data.notes)


def test_a_folder_of_class_folders(tmp_path):
    write_text(tmp_path / "train" / "pos" / "1.txt", "Loved it.\nTruly.\n")
    write_text(tmp_path / "train" / "pos" / ".hidden", "")
    write_text(tmp_path / "train" / "neg" / "2.txt", "Hated\u0085it.")
    write_text(tmp_path / "train" / "neg" / "README", "not an example")
    data = read_labelled(tmp_path / "train")
    assert data.texts == ["Hated\u0085it.", "Loved it.\nTruly."] and data.labels == ["neg", "pos"]
    assert data.source.endswith("train/ (2 classes, 2 files)") and any("README" in note for note in data.notes)


def test_class_files_by_stem_by_suffix_and_as_a_list(tmp_path):
    names = tmp_path / "names"
    write_text(names / "Arabic.txt", "Nader\nNader\n\n  \nKhoury\n")
    write_text(names / "Czech.txt", "Novak\u0085Jr\r\n")  # U+0085 stays inside the line
    for skipped in ("README.md", "SOURCES.md", "SHA256SUMS", "LICENSE", "orig_Czech.txt"):
        write_text(names / skipped, "not data\n")
    data = read_labelled(names)
    assert data.texts == ["Nader", "Nader", "Khoury", "Novak\u0085Jr"] and data.labels == ["Arabic"] * 3 + ["Czech"]
    assert data.source.endswith("names/ (2 files)")
    assert any("skipped 5 file(s)" in note and "orig_Czech.txt" in note for note in data.notes)
    mr = tmp_path / "mr"
    write_text(mr / "rt-polarity.pos", "great\n")
    write_text(mr / "rt-polarity.neg", "dull\n")
    data = read_labelled(mr)
    assert (data.texts, data.labels) == (["dull", "great"], ["neg", "pos"])
    listed = read_labelled([mr / "rt-polarity.pos", str(mr / "rt-polarity.neg")])
    assert (listed.texts, listed.labels) == (["great", "dull"], ["pos", "neg"])
    folders = read_labelled([names, mr])  # a list of folders: one class folder each, one file per example
    assert sorted(set(folders.labels)) == ["mr", "names"]


def test_a_folder_of_one_data_file_reads_it(tmp_path):
    write_text(tmp_path / "sms" / "SMSSpamCollection", "ham\thi\nspam\tfree\n")
    write_text(tmp_path / "sms" / "readme", "about\n")
    data = read_labelled(tmp_path / "sms")
    assert data.labels == ["ham", "spam"] and any("readme" in note for note in data.notes)


def test_bad_utf8_named_with_its_byte_or_replaced(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"text\tlabel\nok\ta\ncaf\xe9\tb\n")
    message = error_of(read_labelled, path)
    assert "byte 19 (line 3)" in message and "--encoding-errors replace" in message
    assert read_labelled(path, encoding_errors="replace").texts == ["ok", "caf\ufffd"]
    with pytest.raises(OptionError):
        read_labelled(path, encoding_errors="ignore")


# ---------------------------------------------------------------------------------------
# Errors


def test_no_such_path_and_empty_files(tmp_path):
    assert "no such file or folder" in error_of(read_labelled, tmp_path / "nope.csv")
    assert "is empty" in error_of(read_labelled, write_text(tmp_path / "e.csv", ""))
    assert "is empty" in error_of(read_labelled, write_text(tmp_path / "blank.txt", "\n \r\n"))
    assert "no examples" in error_of(read_labelled, write_text(tmp_path / "h.csv", "text,label\n"))
    (tmp_path / "empty").mkdir()
    assert "holds no data files" in error_of(read_labelled, tmp_path / "empty")
    plain = write_text(tmp_path / "plain.txt", "just some text\nno labels\n")
    assert "has no labels charlm can find" in error_of(read_labelled, plain)


def test_one_class_only(tmp_path):
    path = write_text(tmp_path / "one.tsv", "text\tlabel\na\tpos\nb\tpos\n")
    message = error_of(read_labelled, path)
    assert "has only one label 'pos'; classification needs at least two classes" in message


def test_empty_texts(tmp_path):
    message = error_of(read_labelled, write_text(tmp_path / "a.csv", "text,label\nfine,a\n  ,b\n"))
    assert "line 3" in message and "'text' is empty" in message
    message = error_of(
        read_labelled, write_text(tmp_path / "a.jsonl", '{"text":"x","label":1}\n{"text":"","label":2}\n')
    )
    assert "line 2" in message and "is empty" in message
    message = error_of(read_labelled, write_text(tmp_path / "a.txt", "ham\thi\nspam\t \n"))
    assert "line 2 has a label but no text" in message
    write_text(tmp_path / "cls" / "pos" / "1.txt", "good")
    write_text(tmp_path / "cls" / "neg" / "2.txt", "\n")
    assert error_of(read_labelled, tmp_path / "cls").startswith(f"{tmp_path / 'cls' / 'neg' / '2.txt'} is empty")
    write_text(tmp_path / "files" / "a.txt", "x\n")
    write_text(tmp_path / "files" / "b.txt", "")
    assert "b.txt is empty" in error_of(read_labelled, tmp_path / "files")


def test_malformed_rows_and_labels(tmp_path):
    message = error_of(read_labelled, write_text(tmp_path / "a.csv", "text,label\nx,a\ny,b,extra\n"))
    assert "line 3 has 3 fields, the header 2" in message
    message = error_of(read_labelled, write_text(tmp_path / "b.jsonl", '{"text":"x","label":["a","b"]}\n'))
    assert "multi-label" in message
    assert "line 2 is not a JSON object" in error_of(
        read_labelled, write_text(tmp_path / "c.jsonl", '{"text":"x","label":1}\n[1]\n')
    )
    assert "line 2 is not such a line" in error_of(read_labelled, write_text(tmp_path / "d.label", "A:b x\nnot one\n"))
    fields = error_of(read_labelled, write_text(tmp_path / "e.txt", "ham\thi\nspam\tyo\n"), text_field="text")
    assert "no named fields" in fields


def test_a_regression_target_is_refused(tmp_path):
    rng = random.Random(0)
    scores = "".join(f"text {i}\t{rng.uniform(0, 5):.2f}\n" for i in range(60))
    message = error_of(
        read_labelled, write_text(tmp_path / "scores.txt", "text\tscore\n" + scores), label_field="score"
    )
    assert "'score' looks like a regression target" in message
    ids = "".join(f"text {i}\t{i}\n" for i in range(60))  # whole numbers, but each one unique
    assert "regression target" in error_of(read_labelled, write_text(tmp_path / "ids.tsv", "text\tlabel\n" + ids))
    stars = "".join(f"text {i}\t{i % 25}\n" for i in range(100))  # 25 whole-number classes, 4 each: classes
    assert len(set(read_labelled(write_text(tmp_path / "stars.tsv", "text\tlabel\n" + stars)).labels)) == 25


def test_mixed_folders(tmp_path):
    write_text(tmp_path / "m" / "pos" / "1.txt", "good")
    write_text(tmp_path / "m" / "loose.txt", "odd\n")
    message = error_of(read_labelled, tmp_path / "m")
    assert "mixes class folders and loose files" in message and "pos/" in message and "loose.txt" in message
    write_text(tmp_path / "k" / "a.txt", "x\n")
    write_text(tmp_path / "k" / "b.csv", "text,label\nx,y\n")
    message = error_of(read_labelled, tmp_path / "k")
    assert "mixes files of different kinds (a.txt and b.csv)" in message
    write_text(tmp_path / "t" / "train.label", "A:b x y\n")
    write_text(tmp_path / "t" / "test.label", "A:b z\n")
    assert "several files of TREC" in error_of(read_labelled, tmp_path / "t")
    write_text(tmp_path / "l" / "a.txt", "ham\thi\n")
    write_text(tmp_path / "l" / "b.txt", "x\n")
    assert "holds label<TAB>text lines" in error_of(read_labelled, tmp_path / "l")


def test_binary_files_are_named(tmp_path):
    nul = tmp_path / "model.bin"
    nul.write_bytes(b"label\ttext\n" + b"\0" * 100)
    message = error_of(read_labelled, nul)
    assert message.startswith(f"{nul} looks like a binary file") and "NUL byte at offset 11" in message
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(random.Random(1).randrange(128, 256) for _ in range(4000)))
    assert "looks like a binary file" in error_of(read_labelled, noise, encoding_errors="replace")
    write_text(tmp_path / "imgs" / "cat" / "1.txt", "meow")
    (tmp_path / "imgs" / "dog").mkdir()
    (tmp_path / "imgs" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    assert "1.png looks like a binary file" in error_of(read_labelled, tmp_path / "imgs")


def test_reading_is_bounded(tmp_path):
    huge = tmp_path / "huge.tsv"
    with open(huge, "wb") as f:  # sparse: no disk is used
        f.truncate((2 << 30) + 1)
    assert "larger than 2 GiB" in error_of(read_labelled, huge)
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    assert "not a regular file" in error_of(read_labelled, fifo)


# ---------------------------------------------------------------------------------------
# read_unlabelled


def test_read_unlabelled(tmp_path):
    assert read_unlabelled(write_text(tmp_path / "in.txt", "one\r\n\ntwo\u0085half\n")) == ["one", "two\u0085half"]
    path = write_text(tmp_path / "in.jsonl", '{"body": "a"}\n\n{"body": "b"}\n')
    assert read_unlabelled(path, text_field="body") == ["a", "b"]
    assert read_unlabelled(write_text(tmp_path / "in.csv", 'id,text\n1,"x\ny"\n2,z\n')) == ["x\ny", "z"]
    assert read_unlabelled("-", stdin=io.BytesIO("\ufeffhi\nthere\n".encode())) == ["hi", "there"]
    assert "no text to classify" in error_of(read_unlabelled, write_text(tmp_path / "e.txt", "\n"))
    assert "does not exist" in error_of(read_unlabelled, tmp_path / "missing.txt")
    assert "is a folder" in error_of(read_unlabelled, tmp_path)


# ---------------------------------------------------------------------------------------
# split_labelled


def make_data(per_class: dict[str, int], seed: int = 0) -> LabelledTexts:
    texts, labels = [], []
    for label, count in per_class.items():
        texts += [f"{label} example {i}" for i in range(count)]
        labels += [label] * count
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return LabelledTexts([texts[i] for i in order], [labels[i] for i in order], "made")


def as_sets(splits):
    return [set(zip(part.texts, part.labels)) for part in (splits.train, splits.val, splits.test)]


def test_the_split_is_seeded_and_ignores_input_order():
    data = make_data({"a": 50, "b": 30, "c": 7})
    first = split_labelled(data, 0.2, 0.1, seed=3)
    assert as_sets(first) == as_sets(split_labelled(data, 0.2, 0.1, seed=3))
    assert as_sets(first) == as_sets(split_labelled(make_data({"a": 50, "b": 30, "c": 7}, seed=9), 0.2, 0.1, seed=3))
    assert as_sets(first) != as_sets(split_labelled(data, 0.2, 0.1, seed=4))
    assert first.labels == ["a", "b", "c"] and first.notes == []


def test_the_split_is_stratified():
    sizes = {"big": 101, "mid": 40, "small": 9, "tiny": 3, "two": 2, "one": 1}
    splits = split_labelled(make_data(sizes), 0.15, 0.25, seed=0)
    for part, fraction in ((splits.val, 0.15), (splits.test, 0.25)):
        counts = Counter(part.labels)
        for label, n in sizes.items():
            assert abs(counts[label] - n * fraction) <= 1, (label, counts[label], n * fraction)
    counts = Counter(splits.train.labels)
    assert counts["tiny"] == 1 and counts["one"] == 1 and set(counts) == set(sizes)
    empty = split_labelled(make_data(sizes), 0, 0, seed=0)
    assert empty.val.texts == [] and empty.test.texts == [] and len(empty.train.texts) == sum(sizes.values())


def test_duplicates_and_conflicting_labels_never_leak():
    rng = random.Random(5)
    texts, labels = [], []
    for _ in range(3000):
        text = f"w{rng.randrange(400)}"
        texts.append(text)
        labels.append(rng.choice("xy") if int(text[1:]) % 4 == 0 else "xyz"[int(text[1:]) % 3])
    splits = split_labelled(LabelledTexts(texts, labels, "noisy"), 0.2, 0.2, seed=1)
    train, val, test = (set(part.texts) for part in (splits.train, splits.val, splits.test))
    assert not (train & val) and not (train & test) and not (val & test)
    distinct_pairs = len(set(zip(texts, labels)))
    assert sum(len(part.texts) for part in (splits.train, splits.val, splits.test)) == distinct_pairs
    conflicting = sum(1 for t in set(texts) if len({lab for tt, lab in zip(texts, labels) if tt == t}) > 1)
    assert f"{len(texts) - distinct_pairs:,} duplicate examples dropped" in splits.notes[0]
    assert splits.notes[1].startswith(f"{conflicting:,} texts appear with more than one label")


def test_given_val_and_test_are_kept_as_they_are():
    data = make_data({"a": 20, "b": 20})
    val = LabelledTexts(["a example 1", "a example 1", "new", "odd one"], ["a", "a", "b", "zzz"], "val.tsv")
    test = LabelledTexts(["b example 3", "other"], ["b", "a"], "test.tsv")
    splits = split_labelled(data, 0.5, 0.0, seed=0, val=val, test=test)
    assert len(splits.train.texts) == 40  # val_fraction is unused when val is given
    assert splits.val.texts == ["a example 1", "a example 1", "new"] and splits.val.source == "val.tsv"
    assert splits.test.texts == ["b example 3", "other"]
    assert "1 validation examples dropped: their labels ('zzz') have no training example" in splits.notes
    assert "2 of 3 validation texts also occur in the training data (kept)" in splits.notes
    assert "1 of 2 test texts also occur in the training data (kept)" in splits.notes
    cut_test = split_labelled(data, 0.0, 0.25, seed=0, val=val)  # test still cut from the data
    assert len(cut_test.test.texts) == 10 and not set(cut_test.test.texts) & set(cut_test.train.texts)


def test_split_errors():
    data = make_data({"a": 10, "b": 10})
    for val, test in ((-0.1, 0.1), (0.5, 0.5), (1.0, 0), (float("nan"), 0)):
        with pytest.raises(OptionError):
            split_labelled(data, val, test, seed=0)
    message = error_of(split_labelled, make_data({"a": 10, "b": 2}), 0.4, 0.4, seed=0)
    assert "class 'b' has only 2 distinct text(s), too few to leave one for training" in message
    assert "has only one label" in error_of(split_labelled, make_data({"a": 5}), 0.1, 0.1, seed=0)
    # "z" lists only texts that also carry rarer-or-earlier labels; some seed cuts all three away
    texts = ["t1", "t2", "t3", "t1", "a1", "a2", "t2", "b1", "b2", "t3", "c1", "c2"]
    labels = ["z"] * 3 + ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    messages = []
    for seed in range(60):
        try:
            split_labelled(LabelledTexts(texts, labels, "tricky"), 0.34, 0.34, seed=seed)
        except CharlmError as exc:
            messages.append(str(exc))
    assert messages and all(m.startswith("class 'z' has no training example") for m in messages)


def test_label_order():
    assert label_order(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_order(["pos", "neg"]) == ["neg", "pos"]
    assert label_order(["-1", "1", "0.5"]) == ["-1", "0.5", "1"]
    assert label_order(["class10", "Class2", "class1", "b"]) == ["b", "class1", "Class2", "class10"]


# ---------------------------------------------------------------------------------------
# The real data sets


def no_leak(splits) -> None:
    train, val, test = (set(part.texts) for part in (splits.train, splits.val, splits.test))
    assert not (train & val) and not (train & test) and not (val & test)


def test_names_data():
    data = read_labelled(shared("names"))
    assert len(data.texts) == 20_074 and len(set(data.labels)) == 18
    splits = split_labelled(data, 0.1, 0.1, seed=0)
    assert splits.labels[0] == "Arabic" and len(splits.labels) == 18
    assert splits.notes[0].startswith("2,059 duplicate examples dropped")
    assert splits.notes[1].startswith("465 texts appear with more than one label")
    assert sum(len(p.texts) for p in (splits.train, splits.val, splits.test)) == 20_074 - 2_059
    assert len(set(splits.train.texts) | set(splits.val.texts) | set(splits.test.texts)) == 17_458
    no_leak(splits)


def test_mr_data():
    data = read_labelled(shared("mr"))
    assert Counter(data.labels) == {"pos": 5_331, "neg": 5_331}
    assert any("orig_rt-polarity.neg" in note for note in data.notes)
    no_leak(split_labelled(data, 0.1, 0.1, seed=0))


def test_trec_data():
    train = read_labelled(shared("trec/train_5500.label"))
    assert len(train.texts) == 5_452 and label_order(train.labels) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    test = read_labelled(shared("trec/TREC_10.label"))
    splits = split_labelled(train, 0.0, 0.0, seed=0, test=test)
    assert len(splits.test.texts) == 500 and "71 duplicate examples dropped (same text and label)" in splits.notes
    assert "10 of 500 test texts also occur in the training data (kept)" in splits.notes
    assert "several files of TREC" in error_of(read_labelled, shared("trec"))


def test_sms_spam_data():
    data = read_labelled(shared("sms-spam/SMSSpamCollection"))
    assert Counter(data.labels) == {"ham": 4_827, "spam": 747} and data.format == "label<TAB>text lines"
    splits = split_labelled(data, 0.1, 0.1, seed=0)
    assert splits.labels == ["ham", "spam"] and splits.notes == ["403 duplicate examples dropped (same text and label)"]
    no_leak(splits)
