"""`charlm serve` as a user runs it: a real child process, its start-up line, Ctrl-C, the
warning for an open interface, and the one-line errors for runs it cannot serve."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import httpx
import pytest
from helpers import assert_user_error, charlm_command, child_env, run_cli, train_tiny_run, word_text, write_text

pytestmark = pytest.mark.slow  # real charlm processes, as the other tests that start them


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("serve-cli"), word_text(3000), max_steps=5, batch_size=4,
                          seq_len=16, eval_every=1000, checkpoint_every=1000, log_every=1)  # fmt: skip


def start(*args: str) -> tuple[subprocess.Popen, str]:
    """charlm serve ARGS on a free port; returns the process and its URL once it listens."""
    process = subprocess.Popen(charlm_command("serve", *args, "--port", "0", "--threads", "1"), env=child_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "serving " in line:
            url = line.split(" on ", 1)[1].split()[0]
            return process, url
    process.kill()
    raise AssertionError("the server did not say where it listens:\n" + "".join(lines))


def test_it_serves_until_ctrl_c_and_exits_cleanly(lm):
    process, url = start(f"mine={lm}")
    try:
        assert url.startswith("http://127.0.0.1:")
        names = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
        assert names == ["mine"]
        body = {"model": "mine", "prompt": "the", "max_tokens": 5}
        assert len(httpx.post(url + "/v1/completions", json=body).json()["choices"][0]["text"]) == 5
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err and err.strip().endswith("stopped")


def test_an_open_interface_without_a_key_is_warned_about(lm):
    process = subprocess.Popen(charlm_command("serve", str(lm), "--host", "0.0.0.0", "--port", "0", "--threads", "1"),
                               env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = process.stderr.readline()
        assert "without --api-key" in first and "0.0.0.0" in first, first
        assert "serving " in process.stderr.readline()
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0


def test_runs_it_cannot_serve_are_one_line_errors(lm, tmp_path):
    assert_user_error(run_cli("serve", str(tmp_path / "nothing"), "--port", "0"), "nothing")
    assert_user_error(run_cli("serve", str(lm), f"run={lm}", "--port", "0"), "two runs would be served as 'run'")
    data = write_text(tmp_path / "labelled.tsv", "text\tlabel\n" + "".join(f"w{i} good\tpos\nw{i} bad\tneg\n"
                                                                          for i in range(20)))  # fmt: skip
    classifier = tmp_path / "cls"
    trained = run_cli("classify", "train", "--data", str(data), "--out", str(classifier), "--max-steps", "2",
                      "--hidden", "8", "--embed", "8", "--threads", "1")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert_user_error(run_cli("serve", str(classifier), "--port", "0"), "is a classifier run")


def test_a_port_in_use_is_a_one_line_error(lm):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", str(lm), "--port", str(port), "--threads", "1", timeout=60)
    assert_user_error(done, f"cannot listen on 127.0.0.1:{port}", "another --port")
