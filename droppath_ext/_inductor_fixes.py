"""Inductor with a data-dependent batch size: the one fix skip mode needs.

Compiled skip mode runs each residual branch on an unbacked (data-dependent)
number of samples (``_skip_rows``). A convolution on such a batch crashes
Inductor's CPU code at run time ("expected size 16==16, stride 1==16 ... Error
in op: aten.convolution"): with its layout optimisation on, Inductor hands the
convolution a channels-last input, while its fake convolution, which cannot
pick a memory format without a hint for every size (an unbacked size has
none), predicts a contiguous output; the real convolution returns a
channels-last one and the generated code's stride check fails. Upstream
reproduction, no droppath_ext (torch 2.11-2.15, CPU)::

    def f(x, conv):
        rows = (x.flatten(1).sum(1) > 0).nonzero().squeeze(1)
        return conv(x.index_select(0, rows))
    torch.compile(f)(torch.randn(6, 16, 4, 4), nn.Conv2d(16, 16, 3, padding=1, groups=16))

Inductor already leaves the layout optimisation off where a convolution's
input has symbolic sizes, on every device but the CPU (``decide_layout_opt``:
"See perf regression with dynamic shape"), whose mkldnn rule is checked first.
The fix applies that rule to the CPU as well, for unbacked sizes only: a graph
with a convolution on an unbacked batch is laid out as written (contiguous),
where fake and real convolutions agree. Graphs without one (every stock
model, every masked one) are decided by Inductor as before.
"""

from __future__ import annotations

from types import ModuleType

import torch

_GRAPH_MODULE = "torch._inductor.graph"
_MARK = "_droppath_ext_unbacked_conv_rule"


def conv_on_unbacked_sizes(gm: torch.fx.GraphModule) -> bool:
    """A convolution in ``gm`` whose input has a data-dependent (unbacked) size."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not torch.ops.aten.convolution.default:
            continue
        value = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
        if isinstance(value, torch.Tensor) and free_unbacked_symbols(value.shape):
            return True
    return False


def _register(graph_module: ModuleType) -> None:
    lowering = graph_module.GraphLowering
    decide = lowering.__dict__["decide_layout_opt"].__func__  # a staticmethod
    if getattr(decide, _MARK, False):
        return

    def decide_layout_opt(gm, *args, **kwargs) -> bool:
        if conv_on_unbacked_sizes(gm):
            return False
        return decide(gm, *args, **kwargs)

    setattr(decide_layout_opt, _MARK, True)
    decide_layout_opt.__doc__ = decide.__doc__
    lowering.decide_layout_opt = staticmethod(decide_layout_opt)


def register() -> None:
    from ._on_import import when_imported

    when_imported(_GRAPH_MODULE, _register)
