"""Shared fixtures: an isolated data/cache folder per test, and the real corpora in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A real corpus from ../shared/data, or a skip that says why (a fresh clone has none)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real corpus {name} not found in {SHARED_DATA} (it sits beside the checkout in CI)")
    return path


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
    return shared_file("tinyshakespeare.txt")


@pytest.fixture
def shakespeare_mirror(isolated_data_dir, shakespeare_path, monkeypatch) -> Path:
    """Serve the shakespeare named corpus from a local mirror (a file:// address)."""
    monkeypatch.setenv("CHARLM_SHAKESPEARE_URL", shakespeare_path.as_uri())
    return shakespeare_path


def train_into(path: Path, corpus, model_config, train_config):
    """Train a small model for real into a new run directory at path (one CPU thread, fp32)."""
    import torch

    from charlm.config import RunConfig
    from charlm.runs.directory import RunDirectory
    from charlm.tasks.language_model import Trainer

    run = RunDirectory(path)
    run.prepare()
    run.save_tokenizer(corpus.tokenizer)
    run.write_config(RunConfig(model=model_config, train=train_config, tokenizer_kind=corpus.tokenizer.kind))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    try:
        return Trainer(model_config, train_config, corpus, run, torch.device("cpu"), "fp32").run()
    finally:
        torch.set_num_threads(previous)
