"""Training objectives, registered by name and chosen by `config.objective`.

An objective is a small object with
  transform(batch, rng) -> {"inputs": model kwargs, "targets": [B, T'], "weights": [B, T']}
      pure and jittable, deterministic given `rng`; the batch holds int32 `tokens`,
      `segment_ids`, `positions`, all [B, R] (R = the packed row length below)
  model_kinds: tuple[str, ...]   the model kinds it trains ("decoder", "encoder",
      "encoder_decoder"; the family's `kind`), checked by `check_model_kind`
  row_length(seq_len) -> int     OPTIONAL: raw tokens per packed row (span corruption packs
      more than seq_len so that its encoder input is exactly seq_len); default seq_len
and the shared loss below works on what it returns. A new objective is one file
`fmjax/objectives/NAME.py` calling `register`; it is imported on first use of its name.
"""
from __future__ import annotations

import functools
import pkgutil
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fmjax import kernels
from fmjax.nn import layers
from fmjax.config import ConfigError
from fmjax.registry import Registry

OBJECTIVES: Registry[Callable[[Any], Any]] = Registry("fmjax.objectives", "objective",
                                                      "objective", ConfigError)


def register(name: str):
    """Decorator for a factory `config -> objective`."""
    def wrap(factory):
        return OBJECTIVES.register(name, factory)
    return wrap


def get(config):
    return OBJECTIVES.get(config.objective)(config)


def get_named(name: str, config):
    """An objective chosen by the caller (fine-tune tasks) rather than by config.objective."""
    return OBJECTIVES.get(name)(config)


def row_length(config) -> int:
    """Raw tokens per packed row for `config.objective`: its `row_length(model.seq_len)` when it
    defines one, else `model.seq_len`. The data pipeline packs rows of this length."""
    objective = get(config)
    if hasattr(objective, "row_length"):
        return int(objective.row_length(config.model.seq_len))
    return config.model.seq_len


def check_model_kind(objective, family_kind: str, config) -> None:
    """Raises ConfigError when `objective` cannot train a model of `family_kind` (an objective
    without `model_kinds` accepts any kind)."""
    kinds = getattr(objective, "model_kinds", None)
    if kinds is None or family_kind in kinds:
        return
    wanted = " or ".join(kinds)
    raise ConfigError(
        f"config.objective = {config.objective!r} trains {wanted} models but "
        f"config.model.family = {config.model.family!r} is of kind {family_kind}; set "
        f"--config.model.family to a family of kind {wanted}, or --config.objective to one "
        f"that trains {family_kind} models ({', '.join(_names_for_kind(family_kind, config))})")


def _names_for_kind(kind: str, config) -> list[str]:
    """Objectives in fmjax/objectives/ that train `kind` models and build under `config`."""
    names = []
    for module in pkgutil.iter_modules(__path__):
        try:
            objective = OBJECTIVES.get(module.name)(config)
        except ConfigError:  # a helper module, or an objective this config cannot build
            continue
        if kind in getattr(objective, "model_kinds", ()):
            names.append(module.name)
    return names


def special_ids(config) -> tuple[int, ...]:
    """The tokenizer's special ids (pad, bos, eos, unk, and a tokenizer's own [MASK]) that are
    set (>= 0), sorted, without repeats."""
    t = config.tokenizer
    return tuple(sorted({t.pad_id, t.bos_id, t.eos_id, t.unk_id, t.mask_id} - {-1}))


def regular_tokens(tokens_BT, segment_ids_BT, config):
    """bool [B, T]: real tokens (segment > 0) that are ordinary pieces, i.e. not pad / bos /
    eos / unk and not one of the extra ids. Only these are ever masked, corrupted or sampled."""
    regular_BT = (segment_ids_BT > 0) & (
        tokens_BT < config.model.vocab_size - config.tokenizer.extra_ids)
    for special in special_ids(config):
        regular_BT &= tokens_BT != special
    return regular_BT


def segment_offsets(segment_ids_BT):
    """int32 [B, T]: each token's index inside its segment (a contiguous run of one segment id),
    0 on padding (segment 0)."""
    t_BT = jnp.broadcast_to(jnp.arange(segment_ids_BT.shape[-1]), segment_ids_BT.shape)
    starts_BT = jnp.concatenate([jnp.ones_like(segment_ids_BT[..., :1], bool),
                                 segment_ids_BT[..., 1:] != segment_ids_BT[..., :-1]], axis=-1)
    start_index_BT = jax.lax.cummax(jnp.where(starts_BT, t_BT, 0), axis=segment_ids_BT.ndim - 1)
    return jnp.where(segment_ids_BT > 0, t_BT - start_index_BT, 0).astype(jnp.int32)


def require_extra_ids(config, needed: int, why: str) -> None:
    """ConfigError unless `tokenizer.extra_ids` reserves at least `needed` ids at the end of
    the vocabulary."""
    extra = config.tokenizer.extra_ids
    if extra < needed:
        raise ConfigError(
            f"config.tokenizer.extra_ids = {extra}: objective {config.objective!r} needs at "
            f"least {needed} ids after the tokenizer's pieces ({why}); set "
            f"--config.tokenizer.extra_ids={needed} (and --config.model.vocab_size to the "
            f"tokenizer's pieces + {needed})")


def cross_entropy(logits_BTV, targets_BT, weights_BT, z_loss: float = 0.0):
    """Sums over weighted tokens: (cross-entropy sum, z-loss sum, weight sum), all float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    weights_BT = weights_BT.astype(jnp.float32)
    ce_sum = jnp.sum((lse_BT - target_logit_BT) * weights_BT)
    z_sum = z_loss * jnp.sum(jnp.square(lse_BT) * weights_BT)
    return ce_sum, z_sum, jnp.sum(weights_BT)


# float32 logits of one chunk of the fused output layer at most: a small model's whole batch
# (8 x 256 positions x 8K classes) fits one chunk (no loop, no copies of x into chunks), while
# GPT-2's 50K classes go 256 at a time
LOGITS_CHUNK_BYTES = 64 << 20


def _chunk_len(batch: int, length: int, classes: int) -> int:
    """Largest divisor of `length` whose batch x chunk x classes float32 logits fit in
    LOGITS_CHUNK_BYTES (at least 1)."""
    best = 1
    for c in range(1, length + 1):
        if length % c == 0 and batch * c * classes * 4 <= LOGITS_CHUNK_BYTES:
            best = c
    return best


def _table_logits(x_BCD, table_VD):
    return jnp.einsum("bcd,vd->bcv", x_BCD, table_VD, preferred_element_type=jnp.float32)


def _padding_masked(logits_BCV, num_classes: int):
    """-inf past the first num_classes columns: padded embedding rows never win."""
    v = logits_BCV.shape[-1]
    if num_classes < v:
        logits_BCV = jnp.where(jnp.arange(v) < num_classes, logits_BCV, -jnp.inf)
    return logits_BCV


def _ce_chunk(x_BCD, table_VD, targets_BC, weights_BC, num_classes: int):
    """(weighted CE sum, d sum / d logits) of one chunk of positions: operation
    `cross_entropy` of fmjax/kernels/ (a kernel where one is registered, else XLA)."""
    logits_BCV = _table_logits(x_BCD, table_VD)
    ce_BC, dlogits_BCV = kernels.call("cross_entropy", _ce_and_grad_xla, logits_BCV, targets_BC,
                                      weights_BC, num_classes=num_classes)
    return jnp.sum(ce_BC), dlogits_BCV


def _ce_and_grad_xla(logits_BCV, targets_BC, weights_BC, num_classes: int):
    v = logits_BCV.shape[-1]
    logits_BCV = _padding_masked(logits_BCV, num_classes)
    max_BC1 = jnp.max(logits_BCV, axis=-1, keepdims=True)
    unnorm_BCV = jnp.exp(logits_BCV - max_BC1)
    sum_BC1 = jnp.sum(unnorm_BCV, axis=-1, keepdims=True)
    lse_BC = (max_BC1 + jnp.log(sum_BC1))[..., 0]
    target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
    onehot_BCV = jnp.arange(v) == targets_BC[..., None]
    probs_BCV = unnorm_BCV * (1.0 / sum_BC1)
    dlogits_BCV = (probs_BCV - onehot_BCV) * weights_BC[..., None]
    return (lse_BC - target_logit_BC) * weights_BC, dlogits_BCV


def _chunks(x_BTD, targets_BT, weights_BT, classes: int):
    """(x, targets, weights) in chunks of the length axis, [T/C, B, C, ...] (the batch axis
    stays whole, so batch-sharded inputs need no gathering)."""
    b, t, _ = x_BTD.shape
    c = _chunk_len(b, t, classes)

    def split(a):  # [B, T, ...] -> [T/C, B, C, ...]
        return jnp.swapaxes(a.reshape(b, t // c, c, *a.shape[2:]), 0, 1)

    return split(x_BTD), split(targets_BT), split(weights_BT.astype(jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def output_cross_entropy(x_BTD, table_VD, targets_BT, weights_BT, num_classes: int):
    """Weighted CE sum of logits x @ table^T (first `num_classes` rows), never materialising
    the [B, T, V] logits: equal to cross_entropy(x @ table.T, ...)[0].

    Used by the train step when there is no z-loss and the output layer is the (tied)
    embedding. Why: for a small model the output layer is a fifth of the FLOPs, and done
    whole its [B, T, V] logits, softmax and gradient each make a round trip through DRAM and
    XLA:CPU adds a transposed copy of the logits gradient for the table gradient. Here a scan
    over chunks of positions (LOGITS_CHUNK_BYTES of logits at most) bounds the logits'
    memory, each chunk's softmax and gradient are one pass (where a `cross_entropy` kernel
    is registered), and the forward pass (when differentiated) already forms the gradients, so the
    backward pass is a scaling."""
    def body(ce, chunk):
        x_BCD, targets_BC, weights_BC = chunk
        logits_BCV = _padding_masked(_table_logits(x_BCD, table_VD), num_classes)
        return ce + cross_entropy(logits_BCV, targets_BC, weights_BC)[0], None
    chunks = _chunks(x_BTD, targets_BT, weights_BT, table_VD.shape[0])
    return jax.lax.scan(body, jnp.zeros((), jnp.float32), chunks)[0]


def _output_ce_fwd(x_BTD, table_VD, targets_BT, weights_BT, num_classes):
    v, d = table_VD.shape

    def chunk_grads(x_BCD, targets_BC, weights_BC, dtable_VD=None):
        """(CE sum, dx, dtable) of one chunk, its table gradient dlogits^T x (the
        weight-gradient GEMM of layers.matmul: row-major operands) added to dtable_VD."""
        ce, dlogits_BCV = _ce_chunk(x_BCD, table_VD, targets_BC, weights_BC, num_classes)
        dlogits_BCV = dlogits_BCV.astype(x_BCD.dtype)  # GEMMs in the compute dtype, as autodiff
        dlogits_NV, x_ND = dlogits_BCV.reshape(-1, v), x_BCD.reshape(-1, d)
        dx_BCD = layers.affine(dlogits_NV, table_VD, None,
                               preferred_element_type=jnp.float32).reshape(x_BCD.shape)
        if dtable_VD is None:
            dtable_VD = layers.weight_grads(dlogits_NV, x_ND, with_bias=False)[0]
        else:
            dtable_VD = layers.add_weight_grad(dtable_VD, dlogits_NV, x_ND)
        return ce, dx_BCD, dtable_VD

    def body(carry, chunk):
        ce, dtable_VD = carry
        ce_chunk, dx_BCD, dtable_VD = chunk_grads(*chunk, dtable_VD)
        return (ce + ce_chunk, dtable_VD), dx_BCD

    # the first chunk outside the loop: its table gradient starts the sum (no zeros to add to),
    # and a batch of one chunk has no loop at all
    chunks = _chunks(x_BTD, targets_BT, weights_BT, v)
    ce, dx_BCD, dtable_VD = chunk_grads(*(a[0] for a in chunks))
    dx_NBCD = dx_BCD[None]
    if chunks[0].shape[0] > 1:
        (ce, dtable_VD), rest = jax.lax.scan(body, (ce, dtable_VD), tuple(a[1:] for a in chunks))
        dx_NBCD = jnp.concatenate([dx_NBCD, rest])
    b, t = targets_BT.shape
    dx_BTD = jnp.swapaxes(dx_NBCD, 0, 1).reshape(b, t, d)
    return ce, (dx_BTD.astype(x_BTD.dtype), dtable_VD.astype(table_VD.dtype))


def _output_ce_bwd(num_classes, res, g):
    dx_BTD, dtable_VD = res
    return dx_BTD * g.astype(dx_BTD.dtype), dtable_VD * g.astype(dtable_VD.dtype), None, None


output_cross_entropy.defvjp(_output_ce_fwd, _output_ce_bwd)
