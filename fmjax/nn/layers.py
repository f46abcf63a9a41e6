"""Layers shared by every model family: dense, embeddings, norms, RoPE, MLPs (attention is
fmjax/nn/attention.py).

Shapes: B batch, T query length, S key length, D model, H query heads, G kv heads, K head dim,
F MLP hidden, V vocab. Every parameter carries logical axis names (see fmjax/mesh.py).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from fmjax import kernels
from fmjax.config import ConfigError
from fmjax.nn import context_parallel
from fmjax.quantization import weights as quantized

Dtype = Any


def normal_init(std: float):
    return nn.initializers.normal(stddev=std)


def param_init(init: Callable, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(init, tuple(axes))


def constrain(x, *axes):
    return nn.with_logical_constraint(x, tuple(axes))


def _affine_xla(x_NI, w_IO, b_O, preferred_element_type=None):
    y_NO = jnp.matmul(x_NI, w_IO, preferred_element_type=preferred_element_type)
    return y_NO if b_O is None else y_NO + b_O


def affine(x_NI, w_IO, b_O, preferred_element_type=None):
    """x w (+ b unless None) for x [N, I], w [I, O] (the product in preferred_element_type, as
    jnp.matmul): operation `dense_affine` of fmjax/kernels/."""
    return kernels.call("dense_affine", _affine_xla, x_NI, w_IO, b_O,
                        preferred_element_type=preferred_element_type)


def _weight_grads_xla(x_NI, g_NO, with_bias: bool):
    dw_IO = jnp.matmul(jnp.transpose(x_NI), g_NO, preferred_element_type=jnp.float32)
    return dw_IO, (jnp.sum(g_NO, axis=0, dtype=jnp.float32) if with_bias else None)


def weight_grads(x_NI, g_NO, with_bias: bool):
    """(dw = x^T g [I, O], db = sum_n g [O] or None) in float32 for x [N, I], g [N, O]:
    operation `dense_weight_grads` of fmjax/kernels/."""
    return kernels.call("dense_weight_grads", _weight_grads_xla, x_NI, g_NO, with_bias=with_bias)


def _add_weight_grad_xla(x_NI, g_NO, dw_IO):
    return dw_IO + _weight_grads_xla(x_NI, g_NO, False)[0]


def add_weight_grad(dw_IO, x_NI, g_NO):
    """dw + x^T g for a float32 dw [I, O], accumulating over chunks of N (the output layer's
    table gradient): operation `dense_add_weight_grad` of fmjax/kernels/."""
    return kernels.call("dense_add_weight_grad", _add_weight_grad_xla, x_NI, g_NO,
                        dw_IO.astype(jnp.float32))


@jax.custom_vjp
def matmul(x_NI, w_IO, b_O):
    """x_NI @ w_IO (+ b_O unless None) for 2-D x, with a backward pass laid out for CPU GEMMs.

    Autodiff's weight gradient x^T @ g contracts the token axis N, the major axis of both
    operands. XLA:CPU's fast GEMM path (YNNPACK) only takes row-major [M,K] @ [K,N] (or
    [M,K] @ [N,K]^T), so XLA folds transposes into the layouts of *both* producers: their
    fusions then write column-major, which also makes XLA re-fuse the whole chain of
    residual-gradient adds into every such producer, and the dot falls back to a slower
    kernel. Here the weight and bias gradients come from `weight_grads` (a kernel that reads
    x^T in place where one is registered, else an explicit transpose of the saved x), so the
    gradient g stays row-major; the forward product is `affine` (the bias added in the
    kernel's registers where one is registered)."""
    return affine(x_NI, w_IO, b_O)


def _matmul_fwd(x_NI, w_IO, b_O):
    return affine(x_NI, w_IO, b_O), (x_NI, w_IO, b_O)


def _matmul_bwd(res, g_NO):
    x_NI, w_IO, b_O = res
    dx_NI = jax.lax.dot_general(g_NO, w_IO, (((1,), (1,)), ((), ())))  # g @ w^T
    dw_IO, db_O = weight_grads(x_NI, g_NO, with_bias=b_O is not None)
    return dx_NI, dw_IO.astype(w_IO.dtype), None if b_O is None else db_O.astype(b_O.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def split_length_product(x, w, b, n_in: int):
    """x @ w (+ b) contracting x's last n_in dims with w's first, the leading dims kept.
    Dense's path when the sequence is split over the mesh (fmjax/nn/context_parallel.py):
    flattening [B, T] into one axis of B*T would merge the batch's and the length's shardings
    into one XLA cannot keep, so it would gather the length (every saved activation C times
    larger)."""
    dims = tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))
    y = jax.lax.dot_general(x, w, (dims, ((), ())))
    return y if b is None else y + b


class Dense(nn.Module):
    """y = x @ W (+ b) contracting the last `len(in_axes)` dims of x; W named in_axes + out_axes."""
    features: Sequence[int]
    in_axes: Sequence[str | None]
    out_axes: Sequence[str | None]
    use_bias: bool = False
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, weights_only=False):
        """x @ W (+ b); with weights_only=True returns (W, b or None) cast to dtype instead,
        so a caller can fuse several projections of the same x into one GEMM."""
        n_in = len(self.in_axes)
        in_shape = x.shape[-n_in:]
        w = self.param("kernel", param_init(normal_init(self.init_std), (*self.in_axes, *self.out_axes)),
                       (*in_shape, *self.features), self.param_dtype)
        w = quantized.weight(self, "kernel", w, range(n_in)).astype(self.dtype)  # int8/int4: x scale
        b = None
        if self.use_bias:
            b = self.param("bias", param_init(nn.initializers.zeros, self.out_axes),
                           tuple(self.features), self.param_dtype).astype(self.dtype)
        if weights_only:
            return w, b
        batch_shape = x.shape[:-n_in]
        if context_parallel.context_size() > 1:  # see split_length_product
            return split_length_product(x.astype(self.dtype), w, b, n_in)
        x_NI = x.astype(self.dtype).reshape(-1, math.prod(in_shape))
        y = matmul(x_NI, w.reshape(math.prod(in_shape), -1),
                   None if b is None else b.reshape(-1))
        return y.reshape(*batch_shape, *self.features)


class Embed(nn.Module):
    """Token (or position) table [N, D]; `attend` gives tied output logits."""
    num_embeddings: int
    features: int
    axes: Sequence[str] = ("vocab", "embed")
    init_std: float = 0.02
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        table_ND = self.param("embedding", param_init(normal_init(self.init_std), self.axes),
                              (self.num_embeddings, self.features), self.param_dtype)
        self.embedding = quantized.weight(self, "embedding", table_ND, (1,))  # int: x scale

    def __call__(self, ids):
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x_BTD):
        return jnp.einsum("btd,vd->btv", x_BTD, self.embedding.astype(self.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x_ND, scale_D, bias_D, eps: float):
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, float32.

    Both passes are operations of fmjax/kernels/ (a kernel where one is registered, else
    XLA). The backward pass recomputes xhat from x and the saved mean and rstd, and uses the
    textbook formula dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)): two row
    reductions and one elementwise pass (autodiff's version leaves XLA:CPU several passes over
    [N, D] per norm)."""
    return _layer_norm_fwd(x_ND, scale_D, bias_D, eps)[0]


def _layer_norm_stats_xla(x_ND, scale_D, bias_D, eps):
    mean_N1 = jnp.mean(x_ND, axis=-1, keepdims=True)
    centered_ND = x_ND - mean_N1
    rstd_N1 = jax.lax.rsqrt(jnp.mean(jnp.square(centered_ND), axis=-1, keepdims=True) + eps)
    return centered_ND * rstd_N1 * scale_D + bias_D, mean_N1, rstd_N1


def _layer_norm_fwd(x_ND, scale_D, bias_D, eps):
    y_ND, mean_N1, rstd_N1 = kernels.call("layer_norm_forward", _layer_norm_stats_xla,
                                          x_ND, scale_D, bias_D, eps=eps)
    return y_ND, (x_ND, scale_D, mean_N1, rstd_N1)


def _layer_norm_grads_xla(x_ND, scale_D, mean_N1, rstd_N1, dy_ND):
    xhat_ND = (x_ND - mean_N1) * rstd_N1
    batch_axes = tuple(range(dy_ND.ndim - 1))
    dscale_D = jnp.sum(dy_ND * xhat_ND, axis=batch_axes)
    dbias_D = jnp.sum(dy_ND, axis=batch_axes)
    dxhat_ND = dy_ND * scale_D
    mean_dxhat_N1 = jnp.mean(dxhat_ND, axis=-1, keepdims=True)
    mean_dxhat_xhat_N1 = jnp.mean(dxhat_ND * xhat_ND, axis=-1, keepdims=True)
    dx_ND = rstd_N1 * (dxhat_ND - mean_dxhat_N1 - xhat_ND * mean_dxhat_xhat_N1)
    return dx_ND, dscale_D, dbias_D


def _layer_norm_bwd(eps, res, dy_ND):
    return kernels.call("layer_norm_backward", _layer_norm_grads_xla, *res, dy_ND)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    eps: float = 1e-5
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BTD):
        d = x_BTD.shape[-1]
        scale = self.param("scale", param_init(nn.initializers.ones, ("embed",)), (d,),
                           self.param_dtype)
        bias = (self.param("bias", param_init(nn.initializers.zeros, ("embed",)), (d,),
                           self.param_dtype) if self.use_bias else jnp.zeros((d,), jnp.float32))
        y = layer_norm(x_BTD.astype(jnp.float32), scale.astype(jnp.float32),
                       bias.astype(jnp.float32), self.eps)
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BTD):
        d = x_BTD.shape[-1]
        x = x_BTD.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
        y = y * self.param("scale", param_init(nn.initializers.ones, ("embed",)), (d,), self.param_dtype)
        return y.astype(self.dtype)


def rope(x_BTHK, positions_BT, theta: float):
    """Rotary embedding, rotating the two halves of each head (Llama / GPT-NeoX layout)."""
    k = x_BTHK.shape[-1]
    freq_K2 = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
    angle_BTK2 = positions_BT[..., None].astype(jnp.float32) * freq_K2
    sin, cos = jnp.sin(angle_BTK2)[:, :, None, :], jnp.cos(angle_BTK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BTHK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHK.dtype)


@jax.custom_vjp
def _gelu_tanh(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2 / pi).

    Its backward pass recomputes the tanh from x instead of saving it: autodiff kept tanh as a
    second [tokens, d_ff] residual, so the forward pass wrote it in a pass of its own and the
    backward read it back."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
    return _gelu_tanh(x), x


def _gelu_tanh_bwd(x, dy):
    c, z = math.sqrt(2 / math.pi), x.astype(jnp.float32)
    t = jnp.tanh(c * (z + 0.044715 * z * z * z))
    dgelu = 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)
    return ((dy * dgelu).astype(x.dtype),)


_gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


def _gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


# activation name -> (function, gated). Gated: act(gate(x)) * up(x).
MLP_ACTIVATIONS = {
    "gelu": (_gelu_tanh, False),  # GPT-2 (tanh approximation)
    "gelu_exact": (_gelu_exact, False),  # BERT (erf)
    "relu": (jax.nn.relu, False),  # T5 v1.0
    "swiglu": (jax.nn.silu, True),  # Llama
    "geglu": (_gelu_tanh, True),  # T5 v1.1 (HF gelu_new: tanh approximation)
}


class MLP(nn.Module):
    """Feed-forward block down(act(up(x))), or gated down(act(gate(x)) * up(x)); see
    MLP_ACTIVATIONS. `dropout` > 0 drops the hidden activations (T5) when not deterministic."""
    d_ff: int
    activation: str = "gelu"
    use_bias: bool = False
    init_std: float = 0.02
    out_init_std: float = 0.02
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _dense(self, name, features, in_axes, out_axes, std):
        return Dense((features,), in_axes, out_axes, use_bias=self.use_bias, init_std=std,
                     dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    @nn.compact
    def __call__(self, x_BTD, *, deterministic=True):
        d = x_BTD.shape[-1]
        if self.activation not in MLP_ACTIVATIONS:
            raise ValueError(f"unknown MLP activation {self.activation!r}; use one of "
                             f"{', '.join(MLP_ACTIVATIONS)}")
        act, gated = MLP_ACTIVATIONS[self.activation]
        up = self._dense("up", self.d_ff, ("embed",), ("mlp",), self.init_std)
        if gated:
            gate = self._dense("gate", self.d_ff, ("embed",), ("mlp",), self.init_std)
            h_BTF = act(gate(x_BTD)) * up(x_BTD)
        else:
            h_BTF = act(up(x_BTD))
        if self.dropout > 0:
            h_BTF = nn.Dropout(self.dropout, deterministic=deterministic)(h_BTF)
        h_BTF = constrain(h_BTF, "batch", "length", "mlp")
        out = self._dense("down", d, ("mlp",), ("embed",), self.out_init_std)(h_BTF)
        return checkpoint_name(out, "mlp_out")


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "qkv_proj"),
    "minimal": jax.checkpoint_policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "qkv_proj", "attention_out", "mlp_out"),
}


def check_remat_policy(policy: str) -> None:
    """ConfigError unless `model.remat_policy` names one of REMAT_POLICIES."""
    if policy not in REMAT_POLICIES:
        raise ConfigError(f"config.model.remat_policy = {policy!r}: unknown policy; use one of "
                          f"{', '.join(REMAT_POLICIES)}")
