"""The divergence guard and its policy: which steps are bad, and what the engine does after one.

* react, the pure decision after a bad step (skip, roll back, stop, give up), over every
  combination of --on-divergence, the bad streak, --skip-limit, the rollbacks in a row and
  --max-rollbacks in a small range, against the rule as the options' help states it.
* DivergenceGuard: a non-finite loss is always bad; a non-finite gradient is bad unless
  fp16's GradScaler owns it; a spike counts only once SPIKE_WARMUP good steps set the
  average; bad steps never move the average; state_dict round trips, so a resumed guard
  judges the next steps exactly as the original would.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from charlm.config import DIVERGENCE_ACTIONS
from charlm.training.guard import EMA_BETA, SPIKE_WARMUP, DivergenceGuard, Reaction, react

# ----- react ---------------------------------------------------------------------------------


def _rule(on_divergence: str, streak: int, skip_limit: int, in_a_row: int, max_rollbacks: int) -> Reaction:
    """The policy in words: stop gives up at once; skip skips until skip_limit bad steps in a
    row, then rolls back; a rollback is refused (give up) once max_rollbacks happened in a row."""
    if on_divergence == "stop":
        return Reaction("stop", True)
    if on_divergence == "skip" and streak < skip_limit:
        return Reaction("skip", False)
    return Reaction("rollback", in_a_row >= max_rollbacks)


@pytest.mark.parametrize("on_divergence", DIVERGENCE_ACTIONS)
def test_react_follows_the_policy_for_every_combination(on_divergence):
    seen = set()
    for streak, skip_limit, in_a_row, max_rollbacks in itertools.product(range(1, 6), range(1, 5), range(4), range(4)):
        got = react(on_divergence, streak, skip_limit, in_a_row, max_rollbacks)
        assert got == _rule(on_divergence, streak, skip_limit, in_a_row, max_rollbacks), (
            on_divergence, streak, skip_limit, in_a_row, max_rollbacks)  # fmt: skip
        seen.add(got)
    expected = {"skip": 3, "rollback": 2, "stop": 1}[on_divergence]  # skip, rollback, give up; stop only
    assert len(seen) == expected


def test_react_at_the_edges():
    assert react("skip", 9, 10, 0, 3) == ("skip", False)
    assert react("skip", 10, 10, 0, 3) == ("rollback", False)  # the tenth bad step in a row rolls back
    assert react("skip", 10, 10, 3, 3) == ("rollback", True)  # the fourth rollback in a row is refused
    assert react("rollback", 1, 10, 2, 3) == ("rollback", False)  # rollback: at the first bad step
    assert react("rollback", 1, 10, 0, 0) == ("rollback", True)  # --max-rollbacks 0: never roll back
    assert react("stop", 1, 10, 0, 3) == ("stop", True)
    with pytest.raises(ValueError, match="unknown on_divergence"):
        react("retry", 1, 10, 0, 3)


# ----- DivergenceGuard ---------------------------------------------------------------------------


def _judge(guard: DivergenceGuard, loss: float, grad_norm: float = 1.0):
    bad, record = guard.judge(torch.tensor(loss), torch.tensor(grad_norm))
    (read,) = guard.read([record])
    assert read.bad == bool(bad)
    return read


def test_a_spike_counts_only_after_the_warmup():
    guard = DivergenceGuard(spike_factor=2.0)
    for _ in range(SPIKE_WARMUP - 1):
        assert not _judge(guard, 1.0).bad
    assert not _judge(guard, 5.0).bad  # SPIKE_WARMUP - 1 good steps: the average is not trusted yet
    average = guard.average
    assert average == pytest.approx(EMA_BETA * 1.0 + (1 - EMA_BETA) * 5.0)
    spike = _judge(guard, 2.0 * average * 1.01)  # SPIKE_WARMUP good steps behind it now
    assert spike.bad and spike.streak == 1 and spike.average == pytest.approx(average)
    assert guard.average == average  # a bad step does not move the average
    assert not _judge(guard, 2.0 * average * 0.99).bad  # just under the factor: good
    assert guard.bad_streak == 0


def test_non_finite_values_and_fp16():
    guard = DivergenceGuard(spike_factor=0)
    for loss, norm in [(math.nan, 1.0), (math.inf, 1.0), (2.0, math.nan), (2.0, -math.inf)]:
        assert _judge(guard, loss, norm).bad
    assert guard.bad_streak == 4 and guard.good_steps == 0 and guard.average is None
    assert not _judge(guard, 1e9).bad  # spike_factor 0: no loss is too large
    fp16 = DivergenceGuard(spike_factor=3.0, check_gradient=False)  # the GradScaler owns gradients
    assert not _judge(fp16, 2.0, math.inf).bad
    assert _judge(fp16, math.nan, 1.0).bad
    assert fp16.describe(_judge(fp16, math.inf, math.nan)) == "the loss is inf"


def test_state_dict_round_trip_judges_the_next_steps_alike():
    losses = [2.0] * 12 + [math.nan, 9.0]
    original = DivergenceGuard(spike_factor=3.0)
    for loss in losses:
        _judge(original, loss)
    copy = DivergenceGuard(spike_factor=3.0)
    copy.load_state_dict(original.state_dict())
    assert copy.state_dict() == original.state_dict() == {"average": original.average, "good_steps": 12,
                                                          "bad_streak": 2}  # fmt: skip
    for loss in [9.0, 2.1, math.inf, 2.0]:
        assert _judge(copy, loss) == _judge(original, loss)
    fresh = DivergenceGuard(spike_factor=3.0)
    fresh.load_state_dict({})  # a checkpoint from before the guard: start afresh
    assert fresh.state_dict() == {"average": None, "good_steps": 0, "bad_streak": 0}
