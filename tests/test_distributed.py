"""Skip mode under DistributedDataParallel (and FSDP) on CPU with gloo: two
real processes on loopback, a converted timm ViT at drop_path_rate 0.5 with
batch 4 per rank, so blocks regularly drop every sample on a rank."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import import_or_skip, subprocess_env

import_or_skip("timm")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable"),
]

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed", "train_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(mode, tmp_path):
    result = subprocess.run(
        [sys.executable, WORKER, str(_free_port()), mode, str(tmp_path)],
        capture_output=True, text=True, timeout=600,  # a hang fails the test
        env=subprocess_env(OMP_NUM_THREADS="1"), cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-6000:]
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for a, b in zip(states[0]["params"], states[1]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the cases under test happened: skip mode computed fewer rows than the
    # batch, and some block dropped every sample on a rank
    assert sum(s["skipped_calls"] for s in states) > 0
    assert sum(s["all_dropped_calls"] for s in states) > 0


def test_ddp_skip_mode_trains_without_unused_parameter_errors(tmp_path):
    _train("ddp", tmp_path)


def test_fsdp_skip_mode_trains(tmp_path):
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no FSDP2 fully_shard")
    _train("fsdp", tmp_path)
