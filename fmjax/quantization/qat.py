"""Quantization-aware training (config.qat.scheme, fine-tuning): the model trains on the weights
`python -m fmjax.quantize` will store, so the quantized export keeps the fine-tuned accuracy.

Forward: every weight the model reads through fmjax.quantization.weights (Dense kernels, Embed
tables; a classifier's head too) is replaced, before `model.apply`, by
`dequantize(quantize(w))` with PTQ's own functions (integer_params.quantize_leaf: qwix.quantize,
absmax per output channel [int4: and group]; weights.dequantize: qwix.dequantize) on the same
stored leaf with the same layout. So a QAT model's forward pass IS the PTQ model's of the same
float weights: the PTQ hook computes exactly these float32 values inside its apply.
Backward: a straight-through estimator, d fake_quantize(w) / dw = identity (the rounding's and
the absmax scale's dependence on w are ignored), so the float master weights, Adam's moments
and weight decay stay float and a resumed run restores them bit for bit like any fine-tune.

With LoRA (config.lora.rank > 0) the adapters are folded in first (lora.LoraModel wraps this
model), so the kernel fake-quantized is W + (alpha / rank) A @ B: the merged kernel the best
checkpoint exports and PTQ quantizes.

Why a wrapper in parameter space (like lora.LoraModel) and not qwix's QAT
(qwix.QtProvider + QtRule through qwix.quantize_model): qwix intercepts jax.lax.dot_general /
einsum, and fmjax's Dense multiplies through its own custom-VJP `matmul` (a kernel call on CPU),
fuses q/k/v into one GEMM and looks embeddings up with gathers, none of which qwix sees (the
measurement is in weights.py's docstring); its fake quantization would also be its own, not
the numerics PTQ stores. And not a flag read by the weights hook: the hook runs inside each
layer, under nn.scan per layer, so it would need a global switch set while jax traces; here
the switch is the model object the engine jits, visible and explicit.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fmjax.config import ConfigError, did_you_mean
from fmjax.quantization import integer_params, schemes as schemes_lib, weights
from fmjax.quantization.schemes import Scheme
from fmjax.quantization.integer_params import Layout


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def fake_quantize(w, layout: Layout, scheme: Scheme, group_size: int):
    """float32 dequantize(quantize(w)): the values PTQ's quantized model computes with for the
    stored leaf `w`; gradient: straight through (identity), cast to w's dtype."""
    q, scale = integer_params.quantize_leaf(w, layout, scheme, group_size)
    return weights.dequantize(q, scale)


def _fake_quantize_fwd(w, layout, scheme, group_size):
    # the residual is an empty array of w's dtype: the backward pass needs only that dtype
    return fake_quantize(w, layout, scheme, group_size), jnp.zeros((0,), w.dtype)


def _fake_quantize_bwd(layout, scheme, group_size, empty_of_w_dtype, g):
    return (g.astype(empty_of_w_dtype.dtype),)


fake_quantize.defvjp(_fake_quantize_fwd, _fake_quantize_bwd)


def fake_quantize_params(params, layouts: dict[str, Layout], scheme: Scheme, group_size: int):
    """`params` (nested dicts) with every leaf in `layouts` fake-quantized (float32), the rest
    the same objects."""
    out = integer_params.mutable(params)
    for key, layout in layouts.items():
        w = integer_params.get_leaf(out, key)
        if tuple(w.shape) != layout.shape:
            raise ValueError(f"params {key} is {w.shape}; the model expects {layout.shape}")
        integer_params.set_leaf(out, key, fake_quantize(w, layout, scheme, group_size))
    return out


class QatModel:
    """A Linen model whose `apply` computes with fake-quantized weights (module docstring);
    `init` and every other attribute (cfg, supports_hidden_output, ...) are the wrapped
    model's, so the params tree, its shardings and checkpoints are unchanged."""

    def __init__(self, model, layouts: dict[str, Layout], scheme: Scheme, group_size: int):
        self.model, self.layouts, self.scheme = model, layouts, scheme
        self.group_size = group_size if scheme.grouped else 0

    def __getattr__(self, name):
        return getattr(self.__dict__["model"], name)

    def init(self, *args, **kwargs):
        return self.model.init(*args, **kwargs)

    def apply(self, variables, *args, **kwargs):
        params = fake_quantize_params(variables["params"], self.layouts, self.scheme,
                                      self.group_size)
        return self.model.apply({**variables, "params": params}, *args, **kwargs)


def scheme_of(qat_config) -> Scheme:
    """The scheme config.qat.scheme names; ConfigError naming the field otherwise."""
    name = qat_config.scheme
    if name not in schemes_lib.SCHEMES:
        raise ConfigError(
            f"config.qat.scheme = {name!r}: no such quantization scheme; set --config.qat.scheme "
            f"to one of {', '.join(sorted(schemes_lib.SCHEMES))} (the --scheme you will pass to "
            f"python -m fmjax.quantize), or '' for float training."
            f"{did_you_mean(name, schemes_lib.SCHEMES)}")
    return schemes_lib.SCHEMES[name]


def wrap(config, model, seq_len: int, mesh):
    """`model` itself when config.qat.scheme is ""; else QatModel(model) fake-quantizing every
    weight PTQ would quantize. ConfigError for an unknown scheme or an int4 group size that does
    not tile some weight (before anything compiles)."""
    if not config.qat.scheme:
        return model
    scheme = scheme_of(config.qat)
    group_size = config.qat.group_size if scheme.grouped else 0
    layouts, _ = integer_params.layouts(model, seq_len, mesh)
    if scheme.grouped:
        schemes_lib.check_group_size(
            group_size, {k: (l.shape, l.contract_axes) for k, l in layouts.items()},
            field="--config.qat.group_size", scheme_field="--config.qat.scheme")
    return QatModel(model, layouts, scheme, group_size)


def refuse_in_pretraining(config) -> None:
    """ConfigError when config.qat.scheme is set for pretraining, which would ignore it: QAT
    adapts trained weights to their quantized grid in the fine-tune stage."""
    if config.qat.scheme:
        raise ConfigError(
            f"config.qat.scheme = {config.qat.scheme!r}: quantization-aware training is a "
            "fine-tune option (python -m fmjax.finetune); pretrain in float without "
            "--config.qat.scheme, then fine-tune with it")
