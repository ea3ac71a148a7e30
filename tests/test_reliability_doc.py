"""RELIABILITY.md backs each guarantee and each bad input with a named test: those tests exist.

A test renamed or deleted without the document following would leave a promise unbacked;
this keeps the two in step.
"""

from __future__ import annotations

import re

from helpers import REPO


def test_every_test_named_in_reliability_md_exists():
    doc = (REPO / "RELIABILITY.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(test_[a-z0-9_]+)", doc))
    tests = sorted((REPO / "tests").glob("test_*.py"))
    defined = {name for path in tests for name in re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), re.M)}
    modules = {path.stem for path in tests}
    assert len(named) > 50
    assert sorted(named - defined - modules) == []
