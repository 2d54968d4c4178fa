"""DTensor inputs (sequence/tensor parallelism Shard(seq), Replicate, data
parallelism Shard(batch)) on a two-rank CPU mesh: the functions and modules
return DTensors of the input's placement, every sample kept or dropped as a
whole across its pieces, identical on every rank, equal to the plain
computation for the same seed, forward and backward; and the same on every
rank even when the ranks seed differently."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from conftest import subprocess_env

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed", "dtensor_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # (two processes on a gloo mesh)
def test_dtensor_inputs_on_a_two_rank_cpu_mesh(tmp_path):
    try:
        from torch.distributed.tensor.experimental import register_sharding  # noqa: F401
    except ImportError:
        pytest.skip("this torch has no DTensor register_sharding")
    result = subprocess.run(
        [sys.executable, WORKER, str(_free_port()), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=subprocess_env(OMP_NUM_THREADS="1"), cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) == 2 * 3 * 4 * 4
    dropped_somewhere = False
    for key, out in ranks[0].items():
        assert torch.equal(out, ranks[1][key]), key  # the same samples dropped on both ranks
        if "add" not in key:
            per_sample = out.flatten(1) == 0
            assert (per_sample.all(1) | (~per_sample).all(1)).all(), key  # whole samples only
            dropped_somewhere |= bool(per_sample.all(1).any())
    assert dropped_somewhere
