"""Threads, determinism and tensors over 2**31 elements."""

import os
import threading

import pytest
import torch

import droppath_ext as dp
from droppath_ext import _library, functional
from conftest import kept_mask


def _in_threads(n, fn):
    errors, results = [], [None] * n

    def run(i):
        try:
            results[i] = fn(i)
        except BaseException as error:  # collected and re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return results


def test_threads_with_private_generators_reproduce_exactly(backend):
    x = torch.randn(64, 33, 17)

    def work(i):
        gen = torch.Generator().manual_seed(100 + i)
        return [dp.drop_path_add(x, x, 0.5, True, generator=gen) for _ in range(20)] + [
            dp.drop_path(x, 0.3, True, generator=gen) for _ in range(20)
        ]

    threaded = _in_threads(8, work)
    for i in range(8):
        sequential = work(i)
        for a, b in zip(threaded[i], sequential):
            assert torch.equal(a, b)


def test_threads_sharing_the_default_generator_do_not_crash(backend):
    x = torch.ones(256, 8)

    def work(i):
        fractions = []
        for _ in range(50):
            y = dp.drop_path(x, 0.5, True)
            assert torch.equal(y[kept_mask(y)], x[kept_mask(y)] * 2)
            fractions.append(kept_mask(y).float().mean().item())
        return sum(fractions) / len(fractions)

    for mean_kept in _in_threads(8, work):
        assert 0.4 < mean_kept < 0.6


def test_deterministic_algorithms_mode(backend):
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(32, 5, requires_grad=True)
        torch.manual_seed(3)
        a = dp.drop_path_add(x, x * 2, 0.4, True)
        a.sum().backward()
        torch.manual_seed(3)
        b = dp.drop_path_add(x, x * 2, 0.4, True)
        assert torch.equal(a, b)
        assert torch.equal(dp.stochastic_depth(x, 0.0, "row"), x)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
@pytest.mark.skipif(not _library.LOADED, reason="the 64-bit indexing under test is the compiled kernels'")
@pytest.mark.skipif(os.environ.get("DROPPATH_EXT_SKIP_BIG") == "1", reason="DROPPATH_EXT_SKIP_BIG=1")
def test_more_than_2_pow_31_elements():
    """float16, 4 samples of 2**29 + 3 elements: 2**31 + 12 in all (~4 GiB)."""
    per_sample = 2**29 + 3
    x = torch.empty(4, per_sample, dtype=torch.float16)
    for b in range(4):
        x[b].fill_(b + 1)
    factors = torch.tensor([0.0, 2.0, 1.0, 0.5])
    out = torch.ops.droppath._scale_rows(x, factors)
    for b in range(4):
        want = (b + 1) * factors[b].item()
        for index in (0, 1, per_sample // 2, per_sample - 2, per_sample - 1):
            assert out[b, index].item() == want, (b, index)
    del out
    # the public op, with a drawn mask: every sample all zero or all 2 * x
    out = functional._backend.forward(x, 0.5, True, True, 0, None, torch.Generator().manual_seed(0))
    for b in range(4):
        first, last = out[b, 0].item(), out[b, -1].item()
        assert first == last and first in (0.0, 2.0 * (b + 1)), (b, first, last)
