"""Fixtures every test gets: an isolated data/cache folder, one torch thread, the real corpora.

Plain helpers (CLI runners, generated text, tiny runs, event readers) live in the helpers
package beside this file and are imported from there (`from helpers import ...`): a module
can be imported by any test, while conftest is pytest's plugin and is never imported by tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """In-process torch work on one thread: small models gain nothing from more, and
    tests that run beside each other (or beside a benchmark) do not oversubscribe the cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path_factory, monkeypatch) -> Path:
    """Each test gets its own data folder and token cache, and never touches the network."""
    folder = tmp_path_factory.mktemp("charlm-data")
    monkeypatch.setenv("CHARLM_DATA_DIR", str(folder))
    monkeypatch.delenv("CHARLM_CACHE_DIR", raising=False)
    # an address that fails at once, so the default corpus takes its offline path
    monkeypatch.setenv("CHARLM_SHAKESPEARE_URL", (folder / "no-such-mirror" / "input.txt").as_uri())
    return folder


@pytest.fixture
def shakespeare_path() -> Path:
    """tinyshakespeare.txt from the shared data folder (skips when absent)."""
    from helpers import shared_file  # imported here: loading conftest never imports charlm

    return shared_file("tinyshakespeare.txt")


@pytest.fixture
def shakespeare_mirror(isolated_data_dir, shakespeare_path, monkeypatch) -> Path:
    """Serve the shakespeare named corpus from a local mirror (a file:// address)."""
    monkeypatch.setenv("CHARLM_SHAKESPEARE_URL", shakespeare_path.as_uri())
    return shakespeare_path
