"""Hugging Face transformers' stochastic-depth modules: which ones
``convert_model`` may replace, found and checked at conversion time.

transformers has no shared DropPath: each model family defines its own
``XxxDropPath`` module (44 of them in transformers 5.24), each a copy of timm's
old formula. A hand-written list would rot as families come and go, so a
module is a candidate when its class comes from a ``transformers.`` module and
its name ends in ``DropPath``, and it is replaced only after its class passed
a behaviour check, once per class (cached): in eval mode, and in training at
drop rate 0, it returns its input; in training at drop rate p it zeroes whole
samples and scales the others by exactly 1 / (1 - p), independently per
sample. Nothing from transformers is imported: the classes are the model's own.

Fidelity: the replacement draws its mask as timm does (``bernoulli_`` in
float32/float64), not as transformers does (``floor(keep + rand)`` in the
input's dtype, then ``x.div(keep)``), so for the same seed the masks differ,
and for the same mask a kept value can differ in the last bit (``x * (1/keep)``
vs ``x / keep``). Eval outputs are bitwise the stock model's. In half
precision transformers' draw is biased (``keep + rand`` is rounded to bfloat16
before the floor: keep 0.9 keeps a sample with probability 230/256); ours is
not.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

_VERIFIED: Dict[type, Optional[str]] = {}  # class -> None (equivalent) or why not


def is_candidate(module: nn.Module) -> bool:
    """A transformers stochastic-depth module (by where its class comes from)."""
    cls = type(module)
    return cls.__module__.startswith("transformers.") and cls.__name__.endswith("DropPath")


def drop_prob(module: nn.Module) -> float:
    value = getattr(module, "drop_prob", None)
    return 0.0 if value is None else float(value)


def why_not_equivalent(module: nn.Module) -> Optional[str]:
    """None when ``module``'s class behaves as this package's ``DropPath``
    (checked once per class), else the reason it is left alone."""
    cls = type(module)
    if cls not in _VERIFIED:
        _VERIFIED[cls] = _check(cls, module)
    return _VERIFIED[cls]


def _per_sample_drop(out: torch.Tensor, x: torch.Tensor, keep: float) -> bool:
    """Every sample of ``out`` is all zeros or exactly ``x / keep``, and both occur."""
    dropped = (out.flatten(1) == 0).all(1)
    kept = (out.flatten(1) == x.div(keep).flatten(1)).all(1)
    return bool((dropped | kept).all() and dropped.any() and kept.any())


def _check(cls: type, module: nn.Module) -> Optional[str]:
    if not hasattr(module, "drop_prob"):
        return f"{cls.__name__} has no drop_prob attribute"
    try:
        probe = cls(0.5)
    except Exception as error:  # noqa: BLE001 - any constructor we cannot call is a reason
        return f"{cls.__name__}(0.5) could not be built to check it: {type(error).__name__}: {error}"
    x = torch.rand(64, 3, 5, dtype=torch.float64) + 0.5  # never zero
    # Its draws must not move the user's random stream.
    with torch.random.fork_rng(devices=[]):
        try:
            probe.eval()
            if not torch.equal(probe(x), x):
                return f"{cls.__name__} is not the identity in eval mode"
            probe.train()
            if not _per_sample_drop(probe(x), x, 0.5):
                return f"{cls.__name__} does not drop whole samples scaled by 1 / keep_prob"
            if not _per_sample_drop(probe(x.transpose(1, 2)), x.transpose(1, 2), 0.5):
                return f"{cls.__name__} does not drop whole samples of a transposed input"
            probe.drop_prob = 0.0
            if not torch.equal(probe(x), x):
                return f"{cls.__name__} is not the identity at drop_prob 0"
        except Exception as error:  # noqa: BLE001 - a module that fails the probe is left alone
            return f"{cls.__name__} failed its check: {type(error).__name__}: {error}"
    return None
