"""Tests for charlm.tasks.lanes: LaneBatcher, lane_views and minimum_tokens.

Covers that y is x shifted by one token in every window; that each of the B lanes is a
contiguous run of the token stream across the windows of an epoch, starting at
offset + b*S (S the lane length); the per-epoch offset (varies between epochs, lies in
[0, T), is a pure function of (seed, epoch), and is 0 without random_offset); that batches
are int64 torch tensors of shape (B, T) whatever the token dtype, including a uint16 .npy
memmap like the corpus cache produces; the CharlmError for too few tokens naming the minimum
B*T+1; and the window count and the IndexError past the last window.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charlm.errors import CharlmError
from charlm.tasks.lanes import LaneBatcher, lane_views, minimum_tokens

# (tokens, batch size B, sequence length T)
SHAPES = [(1000, 4, 16), (1001, 3, 7), (65, 4, 16), (5000, 1, 50), (777, 8, 5)]


def stream(n: int, seed: int = 0, vocab: int = 50000) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n).astype(np.int64)


def lane_length(n: int, batch: int, offset: int) -> int:
    return (n - offset - 1) // batch


@pytest.mark.parametrize("n, B, T", SHAPES)
@pytest.mark.parametrize("random_offset", [True, False])
def test_y_is_x_shifted_by_one_token(n, B, T, random_offset):
    tokens = stream(n)
    batcher = LaneBatcher(tokens, B, T, seed=3, random_offset=random_offset)
    for epoch in range(3):
        o = batcher.offset(epoch)
        S = lane_length(n, B, o)
        for w in range(batcher.windows(epoch)):
            x, y = batcher.batch(epoch, w)
            assert torch.equal(x[:, 1:], y[:, :-1])
            for b in range(B):
                start = o + b * S + w * T
                assert x[b].tolist() == tokens[start : start + T].tolist()
                assert y[b].tolist() == tokens[start + 1 : start + T + 1].tolist()


@pytest.mark.parametrize("n, B, T", SHAPES)
def test_lanes_are_contiguous_across_windows(n, B, T):
    tokens = np.arange(n, dtype=np.int64)  # a token's value is its position
    batcher = LaneBatcher(tokens, B, T, seed=11)
    for epoch in range(4):
        o = batcher.offset(epoch)
        S = lane_length(n, B, o)
        W = batcher.windows(epoch)
        xs = [batcher.batch(epoch, w)[0] for w in range(W)]
        for b in range(B):
            lane = torch.cat([x[b] for x in xs]).numpy()
            start = o + b * S
            assert np.array_equal(lane, np.arange(start, start + W * T))
        # lanes do not overlap: lane b ends before lane b+1 starts
        for b in range(B - 1):
            assert int(xs[-1][b, -1]) < int(xs[0][b + 1, 0])


def test_offsets_vary_are_deterministic_and_in_range():
    n, B, T = 3000, 4, 32
    tokens = stream(n)
    a = LaneBatcher(tokens, B, T, seed=7)
    offsets = [a.offset(epoch) for epoch in range(30)]
    assert len(set(offsets)) > 1
    assert all(0 <= o < T for o in offsets)
    # a fresh batcher (a resumed run) with the same seed gets the same offsets and batches,
    # whatever it computed before
    b = LaneBatcher(tokens, B, T, seed=7)
    b.batch(5, 0)
    assert [b.offset(epoch) for epoch in reversed(range(30))] == offsets[::-1]
    for epoch, window in [(3, 2), (0, 0), (3, 2), (17, 5)]:
        xa, ya = a.batch(epoch, window)
        xb, yb = b.batch(epoch, window)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert int(xa[0, 0]) == int(tokens[a.offset(epoch) + window * T])
    other = LaneBatcher(tokens, B, T, seed=8)
    assert [other.offset(epoch) for epoch in range(30)] != offsets


def test_no_random_offset_means_offset_zero():
    tokens = stream(2000)
    batcher = LaneBatcher(tokens, 4, 16, seed=5, random_offset=False)
    assert all(batcher.offset(epoch) == 0 for epoch in range(20))
    x, _ = batcher.batch(9, 0)
    assert x[0].tolist() == tokens[:16].tolist()


def test_offset_leaves_a_full_window_when_tokens_are_scarce():
    B, T = 4, 16
    for extra in range(0, 5):
        tokens = stream(minimum_tokens(B, T) + extra)
        batcher = LaneBatcher(tokens, B, T, seed=1)
        for epoch in range(20):
            assert 0 <= batcher.offset(epoch) <= extra
            assert batcher.windows(epoch) == 1
            x, y = batcher.batch(epoch, 0)
            assert x.shape == y.shape == (B, T)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int64])
def test_batches_are_int64_tensors_of_shape_b_t(tmp_path, dtype):
    n, B, T = 4000, 5, 24
    high = min(np.iinfo(dtype).max, 70000) + 1
    values = np.random.default_rng(2).integers(0, high, size=n).astype(dtype)
    path = tmp_path / "train.npy"
    np.save(path, values)
    tokens = np.load(path, mmap_mode="r")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.dtype(dtype)
    batcher = LaneBatcher(tokens, B, T, seed=0)
    o = batcher.offset(0)
    S = lane_length(n, B, o)
    for w in (0, batcher.windows(0) - 1):
        x, y = batcher.batch(0, w)
        for t in (x, y):
            assert isinstance(t, torch.Tensor)
            assert t.dtype == torch.int64
            assert t.shape == (B, T)
            assert t.device.type == "cpu"
            assert int(t.min()) >= 0  # no wrap-around of large unsigned ids
        expected = np.stack([values[o + b * S + w * T :][:T] for b in range(B)]).astype(np.int64)
        assert np.array_equal(x.numpy(), expected)  # large unsigned ids keep their value
    if dtype != np.uint8:
        assert int(values.max()) > 32767  # the check above covered ids beyond int16


def test_too_few_tokens_is_an_error_naming_the_minimum():
    B, T = 64, 32
    need = B * T + 1
    assert minimum_tokens(B, T) == need
    with pytest.raises(CharlmError) as info:
        LaneBatcher(stream(need - 1), B, T)
    message = str(info.value)
    assert f"{need:,}" in message
    assert "--batch-size" in message and "--seq-len" in message
    batcher = LaneBatcher(stream(need), B, T)  # exactly enough: one window
    assert batcher.windows(0) == 1
    assert batcher.tokens_per_epoch == B * T


@pytest.mark.parametrize("n, B, T", SHAPES)
def test_window_count_and_index_error(n, B, T):
    batcher = LaneBatcher(stream(n), B, T, seed=4)
    for epoch in range(5):
        o = batcher.offset(epoch)
        S = lane_length(n, B, o)
        W = batcher.windows(epoch)
        assert W >= 1
        assert W * T <= S < (W + 1) * T  # only the ragged tail is dropped
        batcher.batch(epoch, W - 1)
        with pytest.raises(IndexError):
            batcher.batch(epoch, W)
        with pytest.raises(IndexError):
            batcher.batch(epoch, -1)
    assert batcher.tokens_per_epoch == B * T * batcher.windows(0)


def test_lane_views():
    tokens = np.arange(103)
    x, y = lane_views(tokens, 4, offset=2)
    S = (103 - 2 - 1) // 4
    assert x.shape == y.shape == (4, S)
    assert np.array_equal(x, np.arange(2, 2 + 4 * S).reshape(4, S))
    assert np.array_equal(y, x + 1)
    assert np.shares_memory(x, tokens)  # a view, not a copy
    with pytest.raises(CharlmError):
        lane_views(np.arange(4), 4)
