"""Fused residual blocks for Hugging Face transformers (see ``convert.py`` for
how a mixin fuses a block).

A mixin rewrites one layer ``forward``: the same computation, with each
``drop_path(branch) + residual`` run by :func:`droppath_ext.drop_path_residual`
(the branch computed on kept samples only, where that pays). Such a rewrite
is exact only for the forward it was written against, so a layer class is
fused when its ``forward`` is that one, compared as source with comments,
docstrings and annotations removed (``forward_fingerprint``); any other
transformers version's edit leaves the layer unfused, with that reason. The
same forward appears under several names (Dinov2Layer's is also
Dinov2WithRegistersLayer's, EomtLayer's, ...): each is fused.

Skip mode is used only where what the stock layer hands out is unchanged:
not when an attention mask is passed (it has a batch dimension to subset),
nor when extra keyword arguments are passed, nor for Swin with eager
attention (which returns the attention weights of every sample). There, and
under tracers, the masked form runs: every sample computed, the fused add.
While a hook watches a module of the layer (transformers records attention
weights and hidden states with hooks) the stock forward runs
(``_fused_block``).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import textwrap
from typing import Dict, Optional

from torch import Tensor, nn

from ._fused_block import FusedBlock
from .residual import drop_path_residual


def forward_fingerprint(cls: type) -> Optional[str]:
    """A hash of ``cls.forward``'s code, blind to comments, docstrings, type
    annotations and formatting (and so to the Python version), or None when
    its source cannot be read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls.forward)))
    except (OSError, TypeError, SyntaxError):
        return None

    class _Strip(ast.NodeTransformer):
        def visit_FunctionDef(self, node):
            self.generic_visit(node)
            node.returns, node.decorator_list = None, []
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
            return node

        def visit_arg(self, node):
            node.annotation = None
            return node

    return hashlib.sha1(_canonical(_Strip().visit(tree)).encode()).hexdigest()[:16]


# AST fields that differ between Python versions for the same code.
_VERSION_FIELDS = {"type_params", "type_comment", "kind", "ctx"}


def _canonical(node) -> str:
    """The tree as text, the same on every Python from 3.10 (unlike
    ``ast.dump`` and ``ast.unparse``, which change between versions)."""
    if isinstance(node, ast.AST):
        fields = ",".join(f"{name}={_canonical(value)}" for name, value in ast.iter_fields(node)
                          if name not in _VERSION_FIELDS)
        return f"{type(node).__name__}({fields})"
    if isinstance(node, list):
        return "[" + ",".join(_canonical(item) for item in node) + "]"
    return repr(node)


def _drop_prob(module: nn.Module) -> float:
    """The block's drop rate (0 for the nn.Identity transformers puts at rate 0)."""
    return float(getattr(module, "drop_prob", 0.0))


def _stock_module(block: nn.Module):
    """The module of the stock class a fused block was made from (its helper functions)."""
    for cls in type(block).__mro__:
        if cls.__module__.startswith("transformers."):
            return sys.modules[cls.__module__]
    raise TypeError(f"{type(block).__name__} is not a transformers layer")


class _FusedDinov2Layer(FusedBlock):
    """Dinov2Layer's forward (also Dinov2WithRegistersLayer's, EomtLayer's, ...):
    attention and MLP residuals, each with layer scale, one drop-path module."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, **kwargs) -> Tensor:
        if self._droppath_runs_stock():
            return self._droppath_stock_forward(hidden_states, attention_mask, **kwargs)
        p = _drop_prob(self.drop_path)
        attention_skip = self._droppath_policy(p) if attention_mask is None and not kwargs else False

        def attention(x: Tensor) -> Tensor:
            x, _ = self.attention(self.norm1(x), attention_mask=attention_mask, **kwargs)
            return self.layer_scale1(x)

        def mlp(x: Tensor) -> Tensor:
            return self.layer_scale2(self.mlp(self.norm2(x)))

        hidden_states = drop_path_residual(hidden_states, attention, p, self.drop_path.training,
                                           skip_dropped=attention_skip)
        return drop_path_residual(hidden_states, mlp, p, self.drop_path.training,
                                  skip_dropped=self._droppath_policy(p))


class _FusedDinov3ViTLayer(FusedBlock):
    """DINOv3ViTLayer's forward (also EomtDinov3Layer's, Sapiens2Layer's): as
    Dinov2Layer's, with rotary position embeddings for the attention (tables
    the same for every sample; with a batch dimension, the masked form runs)."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None,
                position_embeddings=None, **kwargs) -> Tensor:
        if self._droppath_runs_stock():
            return self._droppath_stock_forward(hidden_states, attention_mask, position_embeddings, **kwargs)
        p = _drop_prob(self.drop_path)
        shared_tables = position_embeddings is None or all(t.dim() <= 2 for t in position_embeddings)
        attention_skip = self._droppath_policy(p) if attention_mask is None and shared_tables and not kwargs else False

        def attention(x: Tensor) -> Tensor:
            x, _ = self.attention(self.norm1(x), attention_mask=attention_mask,
                                  position_embeddings=position_embeddings, **kwargs)
            return self.layer_scale1(x)

        def mlp(x: Tensor) -> Tensor:
            return self.layer_scale2(self.mlp(self.norm2(x)))

        hidden_states = drop_path_residual(hidden_states, attention, p, self.drop_path.training,
                                           skip_dropped=attention_skip)
        return drop_path_residual(hidden_states, mlp, p, self.drop_path.training,
                                  skip_dropped=self._droppath_policy(p))


class _FusedConvNextLayer(FusedBlock):
    """ConvNextLayer and ConvNextV2Layer: ``residual + drop_path(branch)``, the
    branch a depthwise conv and an MLP, with layer scale (v1) or GRN, a
    per-sample normalisation (v2)."""

    def forward(self, features: Tensor) -> Tensor:
        if self._droppath_runs_stock():
            return self._droppath_stock_forward(features)
        p = _drop_prob(self.drop_path)
        return drop_path_residual(features, self._droppath_branch, p, self.drop_path.training,
                                  skip_dropped=self._droppath_policy(p))

    def _droppath_branch(self, features: Tensor) -> Tensor:
        features = self.dwconv(features)
        features = features.permute(0, 2, 3, 1)
        features = self.layernorm(features)
        features = self.pwconv1(features)
        features = self.act(features)
        grn = getattr(self, "grn", None)
        if grn is not None:
            features = grn(features)
        features = self.pwconv2(features)
        scale = getattr(self, "layer_scale_parameter", None)
        if scale is not None:
            features = scale * features
        return features.permute(0, 3, 1, 2)


class _FusedBeitLayer(FusedBlock):
    """BeitLayer: a relative position bias (the same for every sample), then
    attention and MLP residuals with lambda scales."""

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None,
                interpolate_pos_encoding: bool = False, resolution=None, **kwargs) -> Tensor:
        if self._droppath_runs_stock():
            return self._droppath_stock_forward(hidden_states, attention_mask, interpolate_pos_encoding, resolution,
                                                **kwargs)
        user_mask = attention_mask
        if self.relative_position_bias is not None:
            height, width = resolution
            window_size = (height // self.patch_size, width // self.patch_size)
            relative_position_bias = self.relative_position_bias(
                window_size, interpolate_pos_encoding, dim_size=hidden_states.shape[1]
            )
            attention_mask = (
                relative_position_bias + attention_mask if attention_mask is not None else relative_position_bias
            )
        p = _drop_prob(self.drop_path)
        attention_skip = self._droppath_policy(p) if user_mask is None and not kwargs else False

        def attention(x: Tensor) -> Tensor:
            x, _ = self.attention(self.layernorm_before(x), attention_mask=attention_mask, **kwargs)
            return self.lambda_1 * self.dropout(x)

        def mlp(x: Tensor) -> Tensor:
            return self.lambda_2 * self.dropout(self.mlp(self.layernorm_after(x)))

        hidden_states = drop_path_residual(hidden_states, attention, p, self.drop_path.training,
                                           skip_dropped=attention_skip)
        return drop_path_residual(hidden_states, mlp, p, self.drop_path.training,
                                  skip_dropped=self._droppath_policy(p))


class _FusedData2VecVisionLayer(FusedBlock):
    """Data2VecVisionLayer: BEiT's block with the older interface (attention
    outputs returned as a tuple, ``output_attentions``)."""

    def forward(self, hidden_states: Tensor, output_attentions: bool = False, relative_position_bias=None,
                interpolate_pos_encoding: bool = False, resolution=None):
        if self._droppath_runs_stock():
            return self._droppath_stock_forward(hidden_states, output_attentions, relative_position_bias,
                                                interpolate_pos_encoding, resolution)
        p = _drop_prob(self.drop_path)
        attention_outputs: list = []
        attention_skip = self._droppath_policy(p) if not output_attentions else False

        def attention(x: Tensor) -> Tensor:
            outputs = self.attention(self.layernorm_before(x), output_attentions=output_attentions,
                                     relative_position_bias=relative_position_bias,
                                     interpolate_pos_encoding=interpolate_pos_encoding, resolution=resolution)
            attention_outputs[:] = outputs[1:]
            return outputs[0] if self.lambda_1 is None else self.lambda_1 * outputs[0]

        def mlp(x: Tensor) -> Tensor:
            x = self.output(self.intermediate(self.layernorm_after(x)))
            return x if self.lambda_2 is None else self.lambda_2 * x

        hidden_states = drop_path_residual(hidden_states, attention, p, self.drop_path.training,
                                           skip_dropped=attention_skip)
        layer_output = drop_path_residual(hidden_states, mlp, p, self.drop_path.training,
                                          skip_dropped=self._droppath_policy(p))
        return (layer_output,) + tuple(attention_outputs)


class _FusedSwinLayer(FusedBlock):
    """SwinLayer: shifted-window attention (windows are per sample, the shift
    mask the same for every sample) with drop path; the MLP residual has none."""

    def forward(self, hidden_states: Tensor, input_dimensions, always_partition: bool = False, **kwargs):
        if self._droppath_runs_stock():
            return self._droppath_stock_forward(hidden_states, input_dimensions, always_partition, **kwargs)
        if not always_partition:
            self.set_shift_and_window_size(input_dimensions)
        height, width = input_dimensions
        stock = _stock_module(self)
        weights: list = [None]

        def attention(x: Tensor) -> Tensor:
            batch_size, _, channels = x.size()
            x = self.layernorm_before(x).view(batch_size, height, width, channels)
            x, pad_values = self.maybe_pad(x, height, width)
            _, height_pad, width_pad, _ = x.shape
            windows = stock.window_partition(self.cyclic_shift(x), self.window_size)
            windows = windows.view(-1, self.window_size * self.window_size, channels)
            attn_mask = self.get_attn_mask(height_pad, width_pad, dtype=x.dtype, device=windows.device)
            out, weights[0] = self.attention(windows, attn_mask, **kwargs)
            out = self.dropout(out).view(-1, self.window_size, self.window_size, channels)
            out = self.cyclic_shift(stock.window_reverse(out, self.window_size, height_pad, width_pad), reverse=True)
            if pad_values[3] > 0 or pad_values[5] > 0:
                out = out[:, :height, :width, :].contiguous()
            return out.view(batch_size, height * width, channels)

        # Eager attention returns every sample's weights: then every sample is computed.
        returns_weights = getattr(self.attention.config, "_attn_implementation", "eager") == "eager"
        p = _drop_prob(self.drop_path)
        skip = self._droppath_policy(p) if not returns_weights and not kwargs else False
        hidden_states = drop_path_residual(hidden_states, attention, p, self.drop_path.training, skip_dropped=skip)
        residual = hidden_states
        hidden_states = self.mlp(self.layernorm_after(hidden_states))
        return self.dropout(hidden_states) + residual, weights[0]


# forward fingerprint (transformers 5.24) -> the mixin written against that forward
MIXINS: Dict[str, type] = {
    "22d10c945ea1d7ba": _FusedDinov2Layer,
    "b54ce2a7a32a42e8": _FusedDinov3ViTLayer,
    "8ce543689ae05514": _FusedConvNextLayer,
    "8b3b7a4e2a71975e": _FusedConvNextLayer,
    "77af6484c1bda3f9": _FusedBeitLayer,
    "a6b090e26baa4c8a": _FusedData2VecVisionLayer,
    "50df26d13ce47f58": _FusedSwinLayer,
}


def mixin_for(block: nn.Module) -> tuple[Optional[type], Optional[str]]:
    """(the mixin that fuses this transformers layer, None) or (None, why not)."""
    fingerprint = forward_fingerprint(type(block))
    mixin = MIXINS.get(fingerprint) if fingerprint else None
    if mixin is None:
        return None, (f"{type(block).__name__}.forward is not one this package has a fused form of "
                      f"(fingerprint {fingerprint})")
    return mixin, None
