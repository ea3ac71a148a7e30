"""Named corpora: where each comes from, its checksum, and the local cache that holds it.

  shakespeare   tiny Shakespeare (about 1.1 MB), downloaded once, checked against its sha256,
                kept under the data folder.
  pystdlib      the Python standard library's own top-level modules: on every machine that
                has Python, so it needs no download. The offline fallback.

The data folder is $CHARLM_DATA_DIR, else data/ of the source checkout charlm runs from,
else ~/.cache/charlm.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from charlm.errors import CharlmError, is_write_failure, write_error
from charlm.files import atomic_path

DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class DownloadedCorpus:
    filename: str
    url: str
    sha256: str
    url_env: str  # an environment variable that overrides the address (mirrors, tests)


SHAKESPEARE = DownloadedCorpus(
    filename="tinyshakespeare.txt",
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    url_env="CHARLM_SHAKESPEARE_URL",
)

NAMED_CORPORA = {"shakespeare": SHAKESPEARE, "pystdlib": None}
DEFAULT_CORPUS = "shakespeare"
OFFLINE_FALLBACK = "pystdlib"


def default_data_dir() -> Path:
    env = os.environ.get("CHARLM_DATA_DIR")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]  # charlm/text/corpora.py -> the checkout
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout / "data"
    return Path.home() / ".cache" / "charlm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(corpus: DownloadedCorpus, data_dir: Optional[Path] = None) -> Path:
    """Return the local copy of a downloadable corpus, downloading and checking it if needed."""
    target = (data_dir or default_data_dir()) / corpus.filename
    if target.is_file() and _sha256(target) == corpus.sha256:
        return target
    url = os.environ.get(corpus.url_env) or corpus.url
    try:
        with atomic_path(target) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as out:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if is_write_failure(exc):  # the copy could not be written: not the network's fault
                    raise
                reason = getattr(exc, "reason", exc)
                raise CharlmError(f"could not download {corpus.filename} from {url} ({reason})") from None
            digest = _sha256(tmp)
            if digest != corpus.sha256:
                raise CharlmError(
                    f"{corpus.filename} downloaded from {url} has sha256 {digest[:12]}..., "
                    f"expected {corpus.sha256[:12]}...; the copy was discarded"
                )
    except OSError as exc:
        fix = "set CHARLM_DATA_DIR to a writable folder"
        raise write_error(exc, f"the {corpus.filename} download", target.parent, fix) from None
    return target


def python_stdlib_files() -> list[Path]:
    folder = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(folder.glob("*.py"))
    if not files:
        raise CharlmError(f"no Python standard library sources found in {folder}; pass --data FILE")
    return files


def resolve_named_corpus(name: str, data_dir: Optional[Path] = None) -> tuple[str, list[Path], list[str]]:
    """(label, files, notes) for a named corpus."""
    if name == "pystdlib":
        return "pystdlib", python_stdlib_files(), []
    corpus = NAMED_CORPORA[name]
    return name, [fetch(corpus, data_dir)], []


def resolve_default_corpus(data_dir: Optional[Path] = None) -> tuple[str, list[Path], list[str]]:
    """The default corpus, or the offline fallback with a note saying why."""
    try:
        return resolve_named_corpus(DEFAULT_CORPUS, data_dir)
    except CharlmError as exc:
        label, files, notes = resolve_named_corpus(OFFLINE_FALLBACK, data_dir)
        note = f"{exc}; training on the offline fallback corpus '{OFFLINE_FALLBACK}' (Python's own source) instead"
        return label, files, [note, *notes]
