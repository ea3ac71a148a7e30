"""charlm.cli.console: what a person sees while training, on a terminal and off one.

Real events from a real (tiny) training run are fed to TrainReporter twice: through a rich
Console that believes it is a terminal, which must draw the live progress bar (the "train"
label, a percentage, the step's tok/s) beside the eval and end lines; and through one that
writes to a plain file, which must print plain periodic lines instead, with no terminal
control sequences. Text from users and models ("[x]", ":smile:", escape sequences) is shown
literally, never read as rich markup; under torchrun only rank 0 talks.
"""

from __future__ import annotations

import io
import re

import pytest
from helpers import make_corpus, new_trainer, of_kind, word_text
from rich.console import Console as RichConsole

from charlm.cli.console import Console, TrainReporter

MARKUP = "[bold]not bold[/bold] [x] :smile: [link=http://example.com]here[/link]"


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> list[dict]:
    """Every event of a 12-step run (start, train at every step, eval every 4, end)."""
    root = tmp_path_factory.mktemp("console")
    corpus = make_corpus(root, word_text(3000))
    collected: list[dict] = []
    new_trainer(root / "run", corpus, train=dict(max_steps=12, eval_every=4), events=collected).run()
    assert [e["event"] for e in collected][0] == "start" and collected[-1]["event"] == "end"
    assert len(of_kind(collected, "train")) == 12 and len(of_kind(collected, "eval")) == 3
    return collected


def console_into(buffer: io.StringIO, terminal: bool) -> Console:
    rich = RichConsole(file=buffer, force_terminal=terminal, width=100, highlight=False, soft_wrap=True)
    assert rich.is_terminal == terminal
    return Console(stderr=rich)


def report(events: list[dict], terminal: bool, **options) -> str:
    buffer = io.StringIO()
    with TrainReporter(console_into(buffer, terminal), **options) as reporter:
        for event in events:
            reporter(event)
    return buffer.getvalue()


def visible(text: str) -> str:
    """Terminal output without its control sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text).replace("\r", "\n")


def test_a_terminal_gets_the_progress_bar(events):
    shown = report(events, terminal=True)
    assert "\x1b[" in shown  # styled and redrawn: a live display
    text = visible(shown)
    bar_lines = [line for line in text.splitlines() if line.lstrip().startswith("train") and "tok/s" in line]
    assert bar_lines, text
    assert re.search(r"\b100%", text), "the bar never showed the run as complete"
    last = bar_lines[-1]
    assert re.search(r"\d+%", last) and "step 12" in last and "loss" in last
    assert sum(line.startswith("eval step") for line in text.splitlines()) == 3
    assert "stopped at step 12" in text and "reached --max-steps" in text
    assert "model:" in text and "parameters" in text
    # the plain per-step lines are for logs only
    assert not re.search(r"^step +\d+ +epoch", text, re.M)


def test_off_a_terminal_it_prints_plain_periodic_lines(events):
    every = report(events, terminal=False, plain_interval_s=0.0)
    assert "\x1b" not in every and "\r" not in every  # a log file gets no control sequences
    lines = every.splitlines()
    steps = [line for line in lines if re.match(r"^step +\d+ +epoch", line)]
    assert len(steps) == len(of_kind(events, "train")) == 12
    assert all("tok/s" in line and "lr " in line and "loss " in line for line in steps)
    assert steps[-1].startswith("step      12")
    assert sum(line.startswith("eval step") for line in lines) == 3
    assert lines[-1].startswith("stopped at step 12") and "reached --max-steps" in lines[-1]
    assert not any(line.lstrip().startswith("train ") and "%" in line for line in lines)  # no bar
    # the default interval keeps a log short: a run of well under ten seconds gets one line
    sparse = report(events, terminal=False)
    assert len([line for line in sparse.splitlines() if re.match(r"^step +\d+ +epoch", line)]) == 1


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "file"])
def test_user_text_is_shown_literally_never_as_markup(terminal):
    buffer = io.StringIO()
    console = console_into(buffer, terminal)
    for say in (console.info, console.note, console.warn, console.heading, console.error):
        say(f"file {MARKUP}")
    text = visible(buffer.getvalue())
    assert text.count(MARKUP) == 5, text
    assert "😄" not in text  # :smile: stayed a word


def test_control_characters_in_a_message_are_escaped():
    buffer = io.StringIO()
    console_into(buffer, terminal=False).info("name \x1b[31mred\x1b[0m\rover\u202e")
    assert buffer.getvalue() == "name \\x1b[31mred\\x1b[0m\\rover\\u202e\n"


def test_generated_text_goes_to_stdout_byte_for_byte(capsys):
    Console.write_text(f"{MARKUP}\n\x1b[1m raw \u00e9")
    captured = capsys.readouterr()
    assert captured.out == f"{MARKUP}\n\x1b[1m raw \u00e9"
    assert captured.err == ""


def test_only_rank_zero_talks_and_other_ranks_mark_their_errors():
    buffer = io.StringIO()
    rich = RichConsole(file=buffer, force_terminal=True, width=100)
    console = Console(stderr=rich, rank=1)
    assert not console.is_terminal  # no progress bar on a second process
    console.info("hello")
    console.warn("careful")
    console.error("it broke [x]")
    assert visible(buffer.getvalue()).strip() == "charlm (rank 1): error: it broke [x]"
