"""The transformer block every family is assembled from, and the layer stack (scan over layers,
remat). A family picks the pieces through a `BlockSpec`; nothing here branches on a family name.

Block param names: attn_norm, attn, [cross_attn_norm, cross_attn,] mlp_norm, mlp. A stack of
blocks is `layers` (scanned: every leaf gets a leading `layers` axis) or `layer_0`, `layer_1`,
... (config.model.scan_layers = False).

Mixture of experts (config.model.moe, fmjax/nn/moe.py): a sparse block's `mlp` is a MoeMLP.
With moe.interval = 1 every block is sparse; with interval n > 1 the stack's unit is a group of
n blocks, `block_0` ... `block_{n-1}`, the last one sparse (Switch: every other MLP), scanned
(`layers/block_j/...`, leading axis L / n) or unrolled (`layer_g/block_j/...`), so the scan
still compiles one unit.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from fmjax.nn import attention as attention_lib, layers, moe as moe_lib


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What distinguishes one family's blocks from another's; sizes come from config.model."""
    norm: str  # layernorm | rmsnorm
    mlp_activation: str  # see layers.MLP_ACTIVATIONS
    use_bias: bool  # biases in dense layers and norms
    use_rope: bool = False  # rotary positions in self-attention (Llama)
    post_norm: bool = False  # BERT: x = norm(x + f(x)); else pre-norm x = x + f(norm(x))
    causal: bool = True  # self-attention masks later keys (False: encoders)
    cross_attention: bool = False  # encoder-decoder decoder blocks attend to the encoder
    attention_scale: float | None = None  # None = 1/sqrt(head_dim); T5: 1.0
    mlp_dropout: bool = False  # T5: dropout on the MLP hidden activations too
    init: str = "normal"  # normal | gpt2 (outputs std/sqrt(2L)) | t5 (fan-in stds x init_std)


def init_stds(cfg, spec: BlockSpec, n_layers: int) -> dict[str, float]:
    """Normal init stds of a block's weights: query, key/value, attention out, MLP in, MLP out."""
    std = cfg.init_std
    if spec.init == "t5":  # HF T5PreTrainedModel._init_weights, init_std = initializer_factor
        inner = cfg.n_heads * cfg.head_dim
        return dict(query=std * (cfg.d_model * cfg.head_dim) ** -0.5, kv=std * cfg.d_model ** -0.5,
                    attn_out=std * inner ** -0.5, mlp_in=std * cfg.d_model ** -0.5,
                    mlp_out=std * cfg.d_ff ** -0.5)
    out = std / (2 * n_layers) ** 0.5 if spec.init == "gpt2" else std
    return dict(query=std, kv=std, attn_out=out, mlp_in=std, mlp_out=out)


def make_norm(cfg, spec: BlockSpec, name: str):
    kw = dict(eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
              name=name)
    if spec.norm == "layernorm":
        return layers.LayerNorm(use_bias=spec.use_bias, **kw)
    return layers.RMSNorm(**kw)


class Block(nn.Module):
    """One transformer block: self-attention, optional cross-attention, MLP, each wrapped as
    x + drop(f(norm(x))) (pre-norm) or norm(x + drop(f(x))) (post-norm).

    Inputs after x: segment ids and positions [B, T], then optional (None) prefix mask [B, T],
    self-attention logits bias [B, H, T, T], encoder output [B, S, D] and its segment ids
    (decoding: None after the first call, cross-attention then reads its cached keys)."""
    cfg: object  # resolved config.model (models.ModelConfig)
    spec: BlockSpec
    n_layers: int  # blocks in this stack (for the gpt2 init)
    decode: bool = False
    deterministic: bool = True
    scanned: bool = False  # return (x, None), the signature nn.scan needs
    sparse: bool = False  # the MLP is a mixture of experts (cfg.moe)

    def _sublayer(self, x_BTD, name, fn, drop):
        """Pre- or post-norm residual around fn; the norm is called `{name}_norm`."""
        if self.spec.post_norm:
            return make_norm(self.cfg, self.spec, f"{name}_norm")(x_BTD + drop(fn(x_BTD)))
        return x_BTD + drop(fn(make_norm(self.cfg, self.spec, f"{name}_norm")(x_BTD)))

    @nn.compact
    def __call__(self, x_BTD, segment_ids_BT, positions_BT, prefix_mask_BT=None, bias_BHTT=None,
                 encoded_BSD=None, encoder_segment_ids_BS=None):
        cfg, spec = self.cfg, self.spec
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        stds = init_stds(cfg, spec, self.n_layers)
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)

        def attention(name, causal, cross=False):
            return attention_lib.Attention(
                n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                use_bias=spec.use_bias, use_rope=spec.use_rope, rope_theta=cfg.rope_theta,
                dropout=cfg.dropout, init_std=stds["kv"], out_init_std=stds["attn_out"],
                implementation=cfg.attention_impl, dtype=dtype, param_dtype=param_dtype,
                causal=causal, scale=spec.attention_scale,
                query_init_std=None if stds["query"] == stds["kv"] else stds["query"],
                cross=cross, name=name)

        self_attn = attention("attn", spec.causal)
        x_BTD = self._sublayer(x_BTD, "attn", lambda h: self_attn(
            h, segment_ids_BT, positions_BT, decode=self.decode, deterministic=self.deterministic,
            prefix_mask_BT=prefix_mask_BT, bias_BHTS=bias_BHTT), drop)
        x_BTD = layers.constrain(x_BTD, "batch", "length", "embed")

        if spec.cross_attention:
            cross_attn = attention("cross_attn", False, cross=True)
            x_BTD = self._sublayer(x_BTD, "cross_attn", lambda h: cross_attn(
                h, segment_ids_BT, positions_BT, decode=self.decode,
                deterministic=self.deterministic,
                kv_BSD=encoded_BSD, kv_segment_ids_BS=encoder_segment_ids_BS), drop)
            x_BTD = layers.constrain(x_BTD, "batch", "length", "embed")

        if self.sparse:
            sparse_mlp = moe_lib.MoeMLP(cfg.moe, spec.mlp_activation, init_std=stds["mlp_in"],
                                        out_init_std=stds["mlp_out"], dtype=dtype,
                                        param_dtype=param_dtype, name="mlp")
            real_BT = segment_ids_BT > 0  # auxiliary losses over real tokens

            def mlp(h, deterministic):
                return sparse_mlp(h, real_BT, deterministic=deterministic)
        else:
            mlp = layers.MLP(d_ff=cfg.d_ff, activation=spec.mlp_activation,
                             use_bias=spec.use_bias, init_std=stds["mlp_in"],
                             out_init_std=stds["mlp_out"],
                             dropout=cfg.dropout if spec.mlp_dropout else 0.0, dtype=dtype,
                             param_dtype=param_dtype, name="mlp")
        x_BTD = self._sublayer(x_BTD, "mlp", lambda h: mlp(h, deterministic=self.deterministic),
                               drop)
        x_BTD = layers.constrain(x_BTD, "batch", "length", "embed")
        return (x_BTD, None) if self.scanned else x_BTD


class BlockGroup(nn.Module):
    """`cfg.moe.interval` Blocks (`block_0` ...), the last one sparse: the unit a stack scans
    when only every interval-th MLP is a mixture of experts. Same call as Block."""
    cfg: object
    spec: BlockSpec
    n_layers: int
    decode: bool = False
    deterministic: bool = True
    scanned: bool = False

    @nn.compact
    def __call__(self, x_BTD, *inputs):
        n = self.cfg.moe.interval
        for j in range(n):
            x_BTD = Block(self.cfg, self.spec, self.n_layers, self.decode, self.deterministic,
                          sparse=j == n - 1, name=f"block_{j}")(x_BTD, *inputs)
        return (x_BTD, None) if self.scanned else x_BTD


def _unit(cfg):
    """(module class of one stack unit, blocks per unit, its extra kwargs)."""
    if not cfg.moe.enabled:
        return Block, 1, {}
    if cfg.moe.interval == 1:
        return Block, 1, {"sparse": True}
    return BlockGroup, cfg.moe.interval, {}


def stack(cfg, spec: BlockSpec, n_layers: int, x_BTD, *inputs, decode=False, deterministic=True):
    """x through `n_layers` Blocks (inputs: Block's after x, broadcast to every layer), scanned
    (`layers`, one compiled unit) or unrolled (`layer_i`), with config.model.remat_policy; a
    unit is one Block, or a BlockGroup of moe.interval blocks (module docstring).
    Call from inside a compact method: the blocks become the caller's submodules."""
    policy = layers.REMAT_POLICIES[cfg.remat_policy]
    unit_cls, per_unit, kw = _unit(cfg)
    n_units = n_layers // per_unit
    if cfg.scan_layers:
        if cfg.remat_policy != "none":
            unit_cls = nn.remat(unit_cls, policy=policy, prevent_cse=False)
        scanned = nn.scan(unit_cls, variable_axes={"params": 0, "cache": 0, moe_lib.AUX: 0},
                          split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast,) * len(inputs), length=n_units,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        x_BTD, _ = scanned(cfg, spec, n_layers, decode, deterministic, True, name="layers",
                           **kw)(x_BTD, *inputs)
        return x_BTD
    if cfg.remat_policy != "none":
        unit_cls = nn.remat(unit_cls, policy=policy)
    for i in range(n_units):
        x_BTD = unit_cls(cfg, spec, n_layers, decode, deterministic, name=f"layer_{i}", **kw)(
            x_BTD, *inputs)
    return x_BTD
