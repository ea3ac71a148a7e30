"""The only module that talks to the terminal.

Messages, warnings and progress go to stderr through rich; generated text goes to stdout
byte for byte (never through rich, which would read "[x]" or ":smile:" as markup). On a
terminal, training shows a live progress bar; elsewhere (a log file, CI) it prints a plain
line per log event instead, and rich draws nothing per step.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

PROGRESS_UNITS = 1000
PLAIN_LINE_INTERVAL_S = 10.0


def plain(message: str) -> str:
    """A message made safe for a terminal: control characters (ESC sequences, carriage
    returns, newlines), bidi overrides and other invisible format characters, and lone
    surrogates are shown as escapes, so a file name or a prompt cannot restyle, move or
    rewrite what the terminal shows, and a message stays on one line."""
    if message.isprintable():
        return message
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in message)


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Console:
    def __init__(self, stderr: Optional[RichConsole] = None, rank: Optional[int] = None):
        """rank: this process's rank under torchrun. Only rank 0 talks; the others say
        nothing but their own errors, marked with their rank."""
        self.err = stderr or RichConsole(stderr=True, highlight=False, soft_wrap=True)
        self.rank = rank
        self.quiet = bool(rank)

    @property
    def is_terminal(self) -> bool:
        return self.err.is_terminal and not self.quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(plain(message)))

    def note(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(plain(message), style="dim"))

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text("warning: ", style="yellow bold") + Text(plain(message)))

    def error(self, message: str) -> None:
        where = f"charlm (rank {self.rank}): error: " if self.rank else "charlm: error: "
        # one line, whatever the terminal width
        self.err.print(Text(where, style="red bold") + Text(plain(message)), soft_wrap=True)

    def heading(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(plain(message), style="bold"))

    @staticmethod
    def write_text(text: str) -> None:
        """Raw text to stdout, flushed, so generated text streams as it comes."""
        sys.stdout.write(text)
        sys.stdout.flush()


class TrainReporter:
    """Turns trainer events into a progress bar (terminal) or plain log lines (anything else)."""

    def __init__(self, console: Console, plain_interval_s: float = PLAIN_LINE_INTERVAL_S):
        self.console = console
        self.progress: Optional[Progress] = None
        self.task = None
        self.plain_interval_s = plain_interval_s
        self._last_plain_line: Optional[float] = None

    def __enter__(self) -> "TrainReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def _start_bar(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]train[/]"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console.err,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=PROGRESS_UNITS, status="starting")
        self.progress.start()

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_start(self, e: dict[str, Any]) -> None:
        limits = []
        if e.get("max_steps"):
            limits.append(f"{e['max_steps']:,} steps")
        if e.get("max_time"):
            limits.append(duration(e["max_time"]))
        if e.get("epochs"):
            limits.append(f"{e['epochs']:g} epochs")
        threads = f"{e['threads']} CPU thread{'s' if e['threads'] != 1 else ''}"
        where = e["device"]
        if e.get("processes", 1) > 1:
            where = f"{e['processes']} processes ({e['device'].split(':')[0]}, DDP)"
            threads += " per process"
        compiled = ", compiled" if e.get("compile") else ""
        self.console.info(
            f"model: {e['parameters']:,} parameters on {where} ({e['precision']}, {threads}{compiled}); "
            f"train {e['train_tokens']:,} tokens, val {e['val_tokens']:,} tokens; "
            f"stops after {' or '.join(limits)}" + (", whichever comes first" if len(limits) > 1 else "")
        )
        if self.console.is_terminal:
            self._start_bar()

    def _status(self, e: dict[str, Any]) -> str:
        return f"step {e['step']:,}  loss {_loss(e['loss'], 3)}  {e['tokens_per_s']:,.0f} tok/s"

    def _on_train(self, e: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=e["progress"] * PROGRESS_UNITS, status=self._status(e))
        elif self._last_plain_line is None or e["elapsed"] - self._last_plain_line >= self.plain_interval_s:
            # a log file gets a line every few seconds at most; metrics.jsonl has every event
            self._last_plain_line = e["elapsed"]
            self.console.info(
                f"step {e['step']:>7,}  epoch {e['epoch']:6.2f}  loss {_loss(e['loss'], 4)}  lr {e['lr']:.2e}  "
                f"{e['tokens_per_s']:>9,.0f} tok/s  {duration(e['elapsed'])}"
            )

    def _print(self, message: str, style: str = "") -> None:
        if self.progress is not None:
            self.progress.console.print(Text(message, style=style))
        else:
            self.console.err.print(Text(message, style=style))

    def _on_eval(self, e: dict[str, Any]) -> None:
        mark = "  (best)" if e.get("best") else ""
        self._print(
            f"eval step {e['step']:>7,}  val loss {e['loss']:.4f} nats/token  {e['bpc']:.4f} bits/char  "
            f"ppl {e['perplexity']:.2f}  at {duration(e['elapsed'])}{mark}",
            style="cyan",
        )

    def _on_resume(self, e: dict[str, Any]) -> None:
        details = []
        for name, (old, new) in (e.get("changed") or {}).items():
            details.append(f"--{name.replace('_', '-')} {old} -> {new}")
        if e.get("discarded_events"):
            details.append(f"{e['discarded_events']} metrics line(s) after the checkpoint dropped")
        if e.get("removed_leftovers"):
            details.append(f"{len(e['removed_leftovers'])} temporary file(s) of an interrupted write removed")
        extra = f"; {'; '.join(details)}" if details else ""
        self.console.info(f"resuming at step {e['step']:,} (epoch {e['epoch']}, window {e['window']}){extra}")

    def _on_bad_step(self, e: dict[str, Any]) -> None:
        actions = {"skip": "update skipped", "rollback": "rolling back", "stop": "stopping"}
        self._print(
            f"warning: step {e['step']:,}: {e['reason']}; {actions.get(e['action'], e['action'])}", style="yellow"
        )

    def _on_rollback(self, e: dict[str, Any]) -> None:
        self._print(
            f"warning: rolled back from step {e['step']:,} to the checkpoint at step {e['to_step']:,}; "
            f"learning rate x{e['lr_scale']:g} (now {e['lr']:.2e}), rollback {e['in_a_row']} in a row",
            style="yellow",
        )

    def _on_end(self, e: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=PROGRESS_UNITS if e["reason"] != "interrupted" else None)
        self.close()
        reasons = {
            "max_steps": "reached --max-steps",
            "max_time": "reached --max-time",
            "epochs": "reached --epochs",
            "interrupted": "interrupted",
        }
        # the last validation: the whole split at a normal end (the best checkpoint is chosen on
        # the sample the passes during training score, whose loss is not comparable with it)
        last = e.get("last_val_loss")
        best_text = f"; val loss {last:.4f} nats/token" if last is not None else ""
        if e.get("skipped_steps") or e.get("rollbacks"):
            best_text += f"; {e.get('skipped_steps', 0)} bad step(s) skipped, {e.get('rollbacks', 0)} rollback(s)"
        self.console.info(
            f"stopped at step {e['step']:,} after {duration(e['elapsed'])}: {reasons.get(e['reason'], e['reason'])}{best_text}"
        )


def _loss(value: Optional[float], digits: int) -> str:
    """A logged mean loss; None when every step since the last log was skipped."""
    return "-" if value is None else f"{value:.{digits}f}"


def _stdout_console() -> RichConsole:
    return RichConsole(highlight=False, soft_wrap=False)


def _score_rows(score: Any) -> list[tuple[str, str]]:
    """The rows of print_score: names and formatted figures of one Score."""
    rows = [
        ("tokens scored", f"{score.tokens:,}"),
        ("characters", f"{score.chars:,}"),
        ("UTF-8 bytes", f"{score.bytes:,}"),
        ("words", f"{score.words:,}"),
        ("loss (nats/token)", f"{score.loss:.4f}"),
        ("perplexity (per token)", f"{score.perplexity:.3f}"),
        ("bits per character", f"{score.bits_per_char:.4f}"),
        ("bits per byte", f"{score.bits_per_byte:.4f}"),
        ("word perplexity", f"{score.word_perplexity:.2f}"),
    ]
    if score.unknown:
        rows.append(("unknown symbols", f"{score.unknown:,}"))
    return rows


def print_score(label: str, score: Any, method: str) -> None:
    """A text's scores as a two-column table on stdout."""
    print_scores(label, [("", score)], [f"method: {method}"])


def print_scores(label: str, columns: list[tuple[str, Any]], notes: list[str]) -> None:
    """Scores of one text side by side on stdout, a column per (heading, Score), then notes
    (dim lines). With one column and no heading the table has no header."""
    headed = any(heading for heading, _ in columns)
    table = Table(title=Text(plain(f"scores for {label}")), show_header=headed, box=None, padding=(0, 2))
    table.add_column(justify="left")
    for heading, _ in columns:
        table.add_column(Text(heading), justify="right", overflow="fold")
    for i, (name, value) in enumerate(_score_rows(columns[0][1])):
        table.add_row(Text(name), Text(value), *(Text(_score_rows(s)[i][1]) for _, s in columns[1:]))
    out = _stdout_console()
    out.print(table)
    for note in notes:
        out.print(Text(plain(note), style="dim"), soft_wrap=True)


def print_line_scores(lines: list[tuple[int, str]], scores: list[Any], preview: int = 40) -> None:
    """One row per scored line on stdout."""
    table = Table(box=None, padding=(0, 1))
    for name, justify in (
        ("line", "right"),
        ("tokens", "right"),
        ("nats/token", "right"),
        ("bits/char", "right"),
        ("perplexity", "right"),
        ("text", "left"),
    ):
        table.add_column(name, justify=justify)
    for (number, text), score in zip(lines, scores):
        shown = plain(text if len(text) <= preview else text[: preview - 1] + "…")  # a preview, not data
        if not score.tokens:
            table.add_row(str(number), "0", "-", "-", "-", Text(shown))
            continue
        table.add_row(
            str(number),
            f"{score.tokens:,}",
            f"{score.loss:.4f}",
            f"{score.bits_per_char:.4f}",
            f"{score.perplexity:.2f}",
            Text(shown),
        )
    _stdout_console().print(table)
