"""Distributed training with real torchrun: two CPU processes, gloo, DistributedDataParallel.

Every run here is a real `torchrun --standalone --nproc_per_node=2 -m charlm train`
(python -m torch.distributed.run, which is what the torchrun script calls), next to real
single-process runs of `charlm train` with the same options:

  * with the same global batch and seed (and no dropout, whose masks are drawn per process),
    two processes give the loss curve of one process within LOSS_TOLERANCE nats at every
    logged step and every evaluation;
  * the two replicas hold the same weights, bit for bit, at every checkpoint: each process
    reports a digest of its weights, and rank 0's is that of the file it wrote;
  * one writer: every event once in metrics.jsonl, one start line on the terminal;
  * a distributed run killed with SIGKILL and resumed under torchrun ends bit-identical to
    an uninterrupted distributed run (dropout on, so each process's RNG must come back);
  * a checkpoint written by two processes resumes in one, and Ctrl-C under torchrun saves.

Everything runs on one CPU thread per process, fp32, where training is deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import checkpoint_weights, child_env, word_text, write_text

from charlm.runs.directory import LAST, METRICS_FILE, RunDirectory
from charlm.training.checkpoint import weights_digest

# DDP averages two half-batch gradients where one process takes the mean over the whole
# batch: the same number up to float rounding, which training then carries along. Measured
# differences over these 60 steps were at most 2.4e-7 nats; the bound is some 40 times that,
# for other CPUs' rounding, and still far below what any real divergence would show.
LOSS_TOLERANCE = 1e-5
STEPS = 60
OPTIONS = [
    "--hidden", "32", "--layers", "2", "--embed", "16",
    "--batch-size", "8", "--seq-len", "16", "--threads", "1", "--precision", "fp32",
    "--max-steps", str(STEPS), "--log-every", "5", "--eval-every", "30", "--checkpoint-every", "10",
    "--sample-length", "0", "--seed", "7",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch build has no torch.distributed with gloo",
)


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "charlm", *args]


def single(*args: str) -> list[str]:
    return [sys.executable, "-m", "charlm", *args]


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    return done


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (torchrun starts its workers in sessions of their own,
    so killing torchrun's process group would leave them running)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for child in children for p in process_tree(int(child))]


def kill_all(pid: int) -> None:
    """SIGKILL a process and everything it started, workers first: a machine going down."""
    for target in reversed(process_tree(pid)):
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def started_until(command: list[str], env: dict[str, str], cwd: Path, out: Path, ready) -> subprocess.Popen:
    """Start a long torchrun training and return once ready(events so far) holds; the
    events are read as the run writes them, so a line still being written is left out."""
    process = subprocess.Popen(command, env=env, cwd=cwd, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (out / METRICS_FILE).exists():
            so_far = []
            for line in (out / METRICS_FILE).read_text(encoding="utf-8").splitlines():
                try:
                    so_far.append(json.loads(line))
                except json.JSONDecodeError:
                    break
            if ready(so_far):
                return process
        time.sleep(0.01)
    kill_all(process.pid)
    raise AssertionError(f"the run ended or stalled before it was ready: {process.communicate()[1][-2000:]}")


def count(events_so_far: list[dict], kind: str) -> int:
    return sum(e["event"] == kind for e in events_so_far)


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text(encoding="utf-8").splitlines()]


def of_kind(out: Path, kind: str) -> list[dict]:
    return [e for e in events(out) if e["event"] == kind]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("distributed")
    corpus = write_text(root / "corpus.txt", word_text(30_000))
    env = child_env(root / "data")
    # prepare the token cache once, so that the runs below time training only
    done = run(
        single("train", "--data", str(corpus), "--out", str(root / "warm"), *OPTIONS, "--max-steps", "1"), env, root
    )
    assert done.returncode == 0, done.stderr
    return root, corpus, env


@pytest.fixture(scope="module")
def one_and_two(workspace) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The same run (no dropout) in one process and in two."""
    root, corpus, env = workspace
    common = ["train", "--data", str(corpus), *OPTIONS, "--dropout", "0"]
    one = run(single(*common, "--out", str(root / "one")), env, root)
    assert one.returncode == 0, one.stderr
    two = run(torchrun(*common, "--out", str(root / "two")), env, root)
    assert two.returncode == 0, two.stdout + two.stderr
    return root / "one", root / "two", two


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one(one_and_two):
    one, two, _ = one_and_two
    start = of_kind(two, "start")[0]
    assert start["processes"] == 2 and of_kind(one, "start")[0]["processes"] == 1
    assert start["tokens_per_epoch"] == of_kind(one, "start")[0]["tokens_per_epoch"]  # the same global batch
    train_one, train_two = of_kind(one, "train"), of_kind(two, "train")
    assert [e["step"] for e in train_two] == [e["step"] for e in train_one] == list(range(5, STEPS + 1, 5))
    for a, b in zip(train_one, train_two, strict=True):
        assert abs(a["loss"] - b["loss"]) < LOSS_TOLERANCE, (a, b)
        assert a["lr"] == b["lr"] and a["epoch"] == b["epoch"]
    eval_one, eval_two = of_kind(one, "eval"), of_kind(two, "eval")
    assert [e["step"] for e in eval_two] == [30, 60]
    for a, b in zip(eval_one, eval_two, strict=True):
        assert a["tokens"] == b["tokens"]  # the two processes' shares add up to the whole split
        assert abs(a["loss"] - b["loss"]) < LOSS_TOLERANCE, (a, b)
    # the learning moved the loss far more than the processes differ
    assert train_one[0]["loss"] - train_one[-1]["loss"] > 20 * LOSS_TOLERANCE
    end = of_kind(two, "end")[0]
    assert end["reason"] == "max_steps" and end["step"] == STEPS


@pytest.mark.slow
def test_replicas_hold_identical_weights_at_every_checkpoint(one_and_two):
    _, two, _ = one_and_two
    checkpoints = of_kind(two, "checkpoint")
    assert [c["step"] for c in checkpoints] == [0, 10, 20, 30, 40, 50, 60]
    for checkpoint in checkpoints:
        digests = checkpoint["weights_digests"]
        assert len(digests) == 2 and digests[0] == digests[1], checkpoint
    model, _ = RunDirectory(two).load_model(LAST)
    assert weights_digest(model) == checkpoints[-1]["weights_digests"][0]  # what rank 0 wrote is what both held


@pytest.mark.slow
def test_only_rank_zero_writes_and_talks(one_and_two):
    one, two, done = one_and_two
    kinds = [e["event"] for e in events(two)]
    assert kinds.count("start") == 1 and kinds.count("end") == 1
    steps = [e["step"] for e in of_kind(two, "train")]
    assert steps == sorted(set(steps))  # no event written twice
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert not [p for p in two.rglob("*") if p.name.startswith(".")]  # no second writer's leftovers
    assert done.stderr.count("model: ") == 1 and done.stderr.count("run directory: ") == 1
    assert "2 processes (cpu, DDP)" in done.stderr and "1 CPU thread per process" in done.stderr
    assert "error" not in done.stderr.lower()


@pytest.mark.slow
def test_killed_distributed_run_resumes_bit_identical(workspace):
    root, corpus, env = workspace
    steps = 200  # long enough to be killed in the middle
    common = ["train", "--data", str(corpus), *OPTIONS, "--dropout", "0.2", "--checkpoint-every", "1",
              "--max-steps", str(steps)]  # fmt: skip
    reference = root / "reference"
    done = run(torchrun(*common, "--out", str(reference)), env, root)
    assert done.returncode == 0, done.stderr

    killed = root / "killed"
    process = started_until(torchrun(*common, "--out", str(killed)), env, root, killed,
                            lambda so_far: count(so_far, "checkpoint") > 40)  # fmt: skip
    kill_all(process.pid)
    process.communicate()
    time.sleep(0.5)  # let the kernel finish off the workers before their files are read
    saved = RunDirectory(killed).load_trainer_state()
    # (the kill may land between the step-40 event and its files: then step 39 is the last)
    assert 30 <= saved["step"] < steps and len(saved["rng_ranks"]) == 2
    assert saved["task"]["carried_state"][0].shape[1] == 8  # all B lanes, gathered from both processes

    resumed = run(torchrun("train", "--out", str(killed), "--resume"), env, root)
    assert resumed.returncode == 0, resumed.stderr
    for which in ("last", "best"):
        mine, theirs = checkpoint_weights(killed, which), checkpoint_weights(reference, which)
        for name in mine:
            assert torch.equal(mine[name], theirs[name]), f"{which}/{name} differs from the uninterrupted run"
    fields = ("step", "loss", "lr", "grad_norm")
    progress = [tuple(e[f] for f in fields) for e in of_kind(killed, "train")]
    assert progress == [tuple(e[f] for f in fields) for e in of_kind(reference, "train")]


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(workspace, one_and_two):
    """The checkpoint two processes wrote loads whole into one (weights, the carried state of
    all 8 lanes, the position), and the run goes on as the one-process run's checkpoint,
    resumed the same way, goes on: the same steps, losses within LOSS_TOLERANCE."""
    from charlm.tasks.language_model import Trainer
    from charlm.text.corpus import prepare_corpus

    root, _, env = workspace
    one, two, _ = one_and_two
    saved = RunDirectory(two).load_trainer_state()
    config = RunDirectory(two).read_config()
    corpus = prepare_corpus(config.train.data, tokenizer=config.train.tokenizer, val_fraction=config.train.val_fraction)
    trainer = Trainer(config.model, config.train, corpus, RunDirectory(two), torch.device("cpu"), "fp32")
    trainer.resume()
    assert (trainer.step, trainer.world.size) == (STEPS, 1) and saved["world_size"] == 2
    written = checkpoint_weights(two)
    assert all(torch.equal(tensor, written[name]) for name, tensor in trainer.model.state_dict().items())
    carried = saved["task"]["carried_state"]
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(trainer.state, carried, strict=True))
    assert trainer.state[0].shape == (2, 8, 32)  # (L, B, H): every lane, in one process

    continued = {}
    for name, source in (("two-then-one", two), ("one-then-one", one)):
        copy = root / name
        subprocess.run(["cp", "-r", str(source), str(copy)], check=True)
        done = run(single("train", "--out", str(copy), "--resume", "--max-steps", str(STEPS + 20)), env, root)
        assert done.returncode == 0, done.stderr
        assert of_kind(copy, "resume")[0]["step"] == STEPS
        continued[name] = [e for e in events(copy) if e["event"] in ("train", "eval") and e["step"] > STEPS]
    after_two, after_one = continued["two-then-one"], continued["one-then-one"]
    assert [(e["event"], e["step"]) for e in after_two] == [(e["event"], e["step"]) for e in after_one]
    assert [e["step"] for e in after_two if e["event"] == "train"] == list(range(STEPS + 5, STEPS + 21, 5))
    for a, b in zip(after_two, after_one, strict=True):
        assert abs(a["loss"] - b["loss"]) < LOSS_TOLERANCE, (a, b)


@pytest.mark.slow
def test_ctrl_c_under_torchrun_checkpoints_and_resumes(workspace):
    root, corpus, env = workspace
    out = root / "interrupted"
    command = torchrun("train", "--data", str(corpus), *OPTIONS, "--max-steps", "100000", "--out", str(out))
    process = started_until(command, env, root, out, lambda so_far: count(so_far, "train") >= 4)
    try:
        process.send_signal(signal.SIGINT)  # Ctrl-C reaches torchrun, which passes it on to the workers
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_all(process.pid)
    last = events(out)[-1]
    assert last["event"] == "end" and last["reason"] == "interrupted", stderr
    assert "checkpoint saved; continue with:" in stderr
    saved = RunDirectory(out).load_trainer_state()
    assert saved["step"] == last["step"] > 0
    resumed = run(torchrun("train", "--out", str(out), "--resume", "--max-steps", str(last["step"] + 10)), env, root)
    assert resumed.returncode == 0, resumed.stderr
    assert of_kind(out, "end")[-1]["step"] == last["step"] + 10


# ----- the shares, without torchrun ---------------------------------------------------------


def test_lane_shares_of_the_processes_make_up_the_single_process_batch():
    import numpy as np

    from charlm.tasks.lanes import LaneBatcher
    from charlm.training.distributed import World, lane_share

    tokens = np.arange(5000, dtype=np.uint16)
    whole = LaneBatcher(tokens, 12, 16, seed=3)
    for size in (2, 3, 4):
        shares = [LaneBatcher(tokens, 12, 16, seed=3, share=lane_share(World(rank=r, size=size))) for r in range(size)]
        for epoch, window in ((0, 0), (0, 5), (1, 2)):
            x, y = whole.batch(epoch, window)
            parts = [share.batch(epoch, window) for share in shares]
            assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)


def test_validation_shares_add_up_to_the_whole_score():
    import numpy as np

    from charlm.config import ModelConfig
    from charlm.inference.scoring import score_tokens
    from charlm.models.rnnlm import RNNLM
    from charlm.models.state import LaneShare

    torch.manual_seed(0)
    model = RNNLM(ModelConfig(vocab_size=30, cell="gru", layers=1, hidden=16, embed=8, dropout=0.0))
    tokens = np.random.default_rng(0).integers(0, 30, size=10_537).astype(np.uint16)  # a tail after the lanes
    whole = score_tokens(model, tokens, 0, lanes=7, window=64)
    for count in (2, 3, 8):  # 8 parts of 7 lanes: one part scores nothing
        parts = [score_tokens(model, tokens, 0, lanes=7, window=64, part=LaneShare(i, count)) for i in range(count)]
        assert sum(p.tokens for p in parts) == whole.tokens == len(tokens)
        assert sum(p.nll for p in parts) == pytest.approx(whole.nll, rel=1e-6)


@pytest.mark.slow
def test_a_batch_that_does_not_divide_among_the_processes_is_refused_in_one_line(workspace):
    root, corpus, env = workspace
    done = run(
        torchrun("train", "--data", str(corpus), *OPTIONS, "--batch-size", "7", "--out", str(root / "odd")), env, root
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error:" in line and "charlm" in line]
    assert errors == [
        "charlm: error: --batch-size 7 does not divide evenly among the 2 processes torchrun started; "
        "give a multiple of 2 (it is the global batch, shared out among them)"
    ], done.stderr
    assert not (root / "odd").exists()


@pytest.mark.slow
def test_when_a_process_dies_the_others_say_so_in_one_line_and_the_run_resumes(workspace):
    root, corpus, env = workspace
    out = root / "lost"
    command = torchrun("train", "--data", str(corpus), *OPTIONS, "--max-steps", "100000", "--out", str(out))
    process = started_until(command, env, root, out, lambda so_far: count(so_far, "checkpoint") >= 3)
    try:
        workers = process_tree(process.pid)[1:]
        assert len(workers) == 2, workers
        rank_one = [w for w in workers if b"\0RANK=1\0" in b"\0" + Path(f"/proc/{w}/environ").read_bytes()]
        os.kill(rank_one[0], signal.SIGKILL)  # one worker dies (the OOM killer, a lost machine)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_all(process.pid)
    assert process.returncode != 0
    lost = [line for line in stderr.splitlines() if "error: lost contact with the other processes" in line]
    assert len(lost) == 1 and lost[0].startswith("charlm: error: lost contact"), stderr  # rank 0 says it
    assert "the last checkpoint is intact, continue with: torchrun" in lost[0]
    assert "[rank0]: Traceback" not in stderr and "[rank1]: Traceback" not in stderr
    step = RunDirectory(out).load_trainer_state()["step"]
    resumed = run(torchrun("train", "--out", str(out), "--resume", "--max-steps", str(step + 10)), env, root)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["generate", "perplexity"])
def test_generate_and_perplexity_under_torchrun_say_they_run_in_one_process(workspace, one_and_two, command):
    root, _, env = workspace
    _, two, _ = one_and_two
    done = run(torchrun(command, str(two)), env, root)
    assert done.returncode != 0 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if "error:" in line and "charlm" in line]
    assert errors == [f"charlm: error: charlm {command} runs in one process; start it without torchrun "
                      "(only train is distributed)"], done.stderr  # fmt: skip


@pytest.mark.slow
def test_nan_weights_under_torchrun_roll_every_process_back_together(workspace):
    """Both processes read their records back late (every --log-every steps), find the same
    bad streak, and roll back to rank 0's checkpoint, which rank 0 reads and sends."""
    root, corpus, env = workspace
    out = root / "rollback"
    faults = child_env(root / "data", CHARLM_FAULTS="nan-weights@25")
    done = run(torchrun("train", "--data", str(corpus), *OPTIONS, "--dropout", "0", "--skip-limit", "3", "--out", str(out)),
               faults, root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rollbacks = of_kind(out, "rollback")
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] == 20 and rollbacks[0]["lr_scale"] == 0.5
    assert [e["step"] for e in of_kind(out, "bad_step")][:3] == [25, 26, 27]
    end = of_kind(out, "end")[0]
    assert end["step"] == STEPS and end["rollbacks"] == 1
    for checkpoint in of_kind(out, "checkpoint"):
        assert len(set(checkpoint["weights_digests"])) == 1, checkpoint
    model, _ = RunDirectory(out).load_model(LAST)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_a_run_that_gives_up_under_torchrun_says_to_resume_under_torchrun(workspace):
    """The engine's own messages word the resume command as the CLI's do: under torchrun,
    a torchrun command (before, the trainer's copy printed a one-process command)."""
    root, corpus, _ = workspace
    out = root / "gives-up"
    faults = child_env(root / "data", CHARLM_FAULTS="nan-loss@25")
    done = run(torchrun("train", "--data", str(corpus), *OPTIONS, "--on-divergence", "stop", "--out", str(out)),
               faults, root)  # fmt: skip
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("charlm: error: training diverged")]
    assert len(errors) == 1, done.stderr  # rank 0's; the other process marks its copy with its rank
    assert f"continue it with a lower --lr, e.g. torchrun ... -m charlm train --out {out} --resume --lr " in errors[0]
    assert errors[0].endswith("(any number of processes) (or try --precision fp32)"), errors[0]
    assert RunDirectory(out).load_trainer_state()["step"] == 20  # the checkpoint it names is there
