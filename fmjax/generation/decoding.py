"""The compiled decoding programs: a KV-cached loop for decoders (left-padded prompts of
different lengths, per-row positions) and for encoder-decoders (the encoder runs once; the
decoder's self-attention keys/values and every layer's cross-attention keys/values are cached).

Both return new tokens [B, N] for N = `new_tokens`, a static bucket; row b gets at most
max_new_B[b] (dynamic, <= N) and stops early after a token with stop_V[token] (the rest of the
row is `pad_id`); the loop ends once every row has stopped. The sampling settings
(temperature, top_k, top_p) are traced values too, so a serving process compiles one program
per (model, batch, prompt width, N) and never per request. Every random choice is a key
fold_in(fold_in(fold_in(key, prompt index), sample index), step): a row's samples depend on
the seed and its own indices only, not on the batch it was padded into.

Each program is its kind's prefill (the prompt, or the encoder input, into an empty cache ->
the first new token's logits) and step (one token per row -> the next logits), looped by
decode_loop; fmjax.generation.stablehlo_export exports the same prefill and step functions.

`PROGRAMS` maps a model family kind to its program; TRACES counts how often each program was
traced (= compiled), for tests that check a serving loop does not recompile.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

TRACES: collections.Counter = collections.Counter()  # program name -> times traced


class Settings(NamedTuple):
    """Sampling settings as arrays (traced, not static): temperature 0 = greedy (argmax);
    else temperature, then the top_k most likely tokens (0 = all), then the smallest set with
    mass >= top_p (1 = all)."""
    temperature: jax.Array  # float32 []
    top_k: jax.Array  # int32 []
    top_p: jax.Array  # float32 []

    @classmethod
    def make(cls, temperature=0.0, top_k=0, top_p=1.0) -> "Settings":
        return cls(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))


def filter_logits(logits_BV, temperature, top_k, top_p):
    """Temperature, then keep the top_k most likely (0 = all) and, of those, the smallest set
    with mass >= top_p (always the top token); the rest -inf. Traced or Python values."""
    v = logits_BV.shape[-1]
    logits_BV = logits_BV / jnp.maximum(temperature, 1e-6)
    sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth_B1 = jax.lax.dynamic_slice_in_dim(sorted_BV, k - 1, 1, axis=-1)
    sorted_BV = jnp.where(sorted_BV < kth_B1, -jnp.inf, sorted_BV)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of the more likely tokens
    keep_BV = ((before_BV < top_p) | (top_p >= 1.0)) & (sorted_BV > -jnp.inf)
    keep_BV = keep_BV.at[:, 0].set(True)
    cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)


def row_keys(key, rows_B2):
    """[B] keys: fold_in(fold_in(key, prompt index), sample index) for rows_B2 = (prompt
    index, sample index) per row."""
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r[0]), r[1]))(rows_B2)


def choose(logits_BV, keys_B, step, settings: Settings):
    """The next token per row: argmax at temperature 0, else a sample from the filtered
    logits with the row's key for this step (the sort only runs when top_k / top_p filter)."""
    def sample(logits_BV):
        filtering = (settings.top_k > 0) | (settings.top_p < 1.0)
        logits_BV = jax.lax.cond(
            filtering,
            lambda x: filter_logits(x, settings.temperature, settings.top_k, settings.top_p),
            lambda x: x / jnp.maximum(settings.temperature, 1e-6), logits_BV)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys_B, step)
        return jax.vmap(jax.random.categorical)(step_keys, logits_BV).astype(jnp.int32)

    return jax.lax.cond(settings.temperature > 0, sample,
                        lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32), logits_BV)


def decode_loop(step_fn, cache, logits_BV, keys_B, settings: Settings, stop_V, max_new_B,
                new_tokens: int, pad_id: int):
    """Tokens [B, new_tokens]: token 0 chosen from logits_BV (the prompt's), token i from
    step_fn(cache, token i-1, i-1) -> (logits_BV, cache); no model call after the last one.
    A row stops after a token with stop_V[token] or its max_new_B-th token and gets pad_id
    from then on."""
    b = logits_BV.shape[0]
    first_B = choose(logits_BV, keys_B, 0, settings)
    out_BN = jnp.full((b, new_tokens), pad_id, jnp.int32).at[:, 0].set(first_B)

    def cond(carry):
        i, _, _, done_B = carry
        return (i < new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, cache, out_BN, done_B = carry
        last_B = jax.lax.dynamic_index_in_dim(out_BN, i - 1, axis=1, keepdims=False)
        logits_BV, cache = step_fn(cache, last_B, i - 1)
        token_B = jnp.where(done_B, pad_id, choose(logits_BV, keys_B, i, settings))
        out_BN = jax.lax.dynamic_update_index_in_dim(out_BN, token_B, i, axis=1)
        return i + 1, cache, out_BN, done_B | stop_V[token_B] | (i + 1 >= max_new_B)

    carry = (jnp.int32(1), cache, out_BN, stop_V[first_B] | (max_new_B <= 1))
    return jax.lax.while_loop(cond, body, carry)[2]


def _unstack_layers(tree):
    """params with every scanned stack `layers` (leaves [L, ...]) as `layer_0` ... `layer_{L-1}`
    (the unrolled tree), or None when a `layers` subtree's leaves do not share one leading
    axis (then nothing is unrolled)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for name, sub in tree.items():
        if name == "layers":
            leaves = jax.tree.leaves(sub)
            n = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
            if len(n) != 1 or None in n:
                return None
            for i in range(n.pop()):
                out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], sub)
        else:
            out[name] = _unstack_layers(sub)
            if out[name] is None:
                return None
    return out


def unrolled(model, params):
    """(model, params) with the layer stacks unrolled, for decoding (traced once per program;
    the slices of the stacked weights are loop-invariant). Why: nn.scan carries the "cache"
    collection as scan outputs, so every decoding step would write a whole new [layers, B, L,
    ...] cache (measured: about half of a decode step of a 4-layer GPT-2 on CPU); unrolled,
    each layer's cache is its own buffer, updated in place. Unchanged when the model does not
    scan its layers or its params are not plain stacks."""
    cfg = getattr(model, "cfg", None)
    if not getattr(cfg, "scan_layers", False) or not dataclasses.is_dataclass(cfg):
        return model, params
    flat = _unstack_layers(params)
    if flat is None:
        return model, params
    return model.clone(cfg=dataclasses.replace(cfg, scan_layers=False)), flat


def init_cache(model, *example_inputs, **kw):
    """Zeros shaped like the model's "cache" collection for these inputs (decode=True)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs,
                                               decode=True, **kw))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _last_logits(model, params, cache, *args, **kw):
    """(logits of the call's last token [B, V], the updated cache): one decode=True call."""
    logits_BTV, mutated = model.apply({"params": params, "cache": cache}, *args, decode=True,
                                      mutable=["cache"], **kw)
    return logits_BTV[:, -1], mutated["cache"]


def decoder_prefill(model, params, cache, tokens_BP, segment_ids_BP, *, prefix_lm: bool = False):
    """(logits_BV of each prompt's last token, the cache holding the prompts) for left-padded
    prompts tokens_BP (segment_ids_BP: 1 on a prompt's tokens, 0 on its left padding, never
    attended to; each prompt's positions start at 0 at its first token), into an empty cache
    (init_cache) of at least P slots. The prompt but its last token fills the cache (its
    logits are never computed: no [B, P, V] output), then the last token runs alone.
    prefix_lm: the prompt is the bidirectional prefix, so it runs in one call."""
    positions_BP = jnp.maximum(jnp.cumsum(segment_ids_BP, axis=1) - 1, 0)
    if prefix_lm:
        return _last_logits(model, params, cache, tokens_BP, segment_ids_BP, positions_BP,
                            prefix_mask_BT=segment_ids_BP)
    if tokens_BP.shape[1] > 1:
        _, cache = _last_logits(model, params, cache, tokens_BP[:, :-1], segment_ids_BP[:, :-1],
                                positions_BP[:, :-1])
    return _last_logits(model, params, cache, tokens_BP[:, -1:], segment_ids_BP[:, -1:],
                        positions_BP[:, -1:])


def decoder_step(model, params, cache, token_B, position_B):
    """(logits_BV, cache) after one token per row at position_B (the row's prompt length +
    the new tokens before this one), written at the cache's next slot."""
    return _last_logits(model, params, cache, token_B[:, None], jnp.ones_like(token_B)[:, None],
                        position_B[:, None])


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "prefix_lm", "pad_id"))
def decoder_program(model, params, tokens_BP, segment_ids_BP, key, rows_B2, settings: Settings,
                    stop_V, max_new_B, *, new_tokens: int, prefix_lm: bool = False,
                    pad_id: int = 0):
    """New tokens [B, new_tokens] after left-padded prompts tokens_BP (decoder_prefill, then
    decoder_step per new token)."""
    TRACES["decoder"] += 1
    model, params = unrolled(model, params)
    b, p = tokens_BP.shape
    cache = init_cache(model, jnp.zeros((b, p + new_tokens), jnp.int32))
    logits_BV, cache = decoder_prefill(model, params, cache, tokens_BP, segment_ids_BP,
                                       prefix_lm=prefix_lm)
    lengths_B = jnp.sum(segment_ids_BP, axis=1)

    def step(cache, token_B, i):
        return decoder_step(model, params, cache, token_B, lengths_B + i)

    return decode_loop(step, cache, logits_BV, row_keys(key, rows_B2), settings, stop_V,
                       max_new_B, new_tokens, pad_id)


def encoder_decoder_prefill(model, params, cache, encoder_BS, encoder_segment_ids_BS, *,
                            start_id: int = 0):
    """(logits_BV of the first decoder token, the cache) for right-padded encoder inputs
    (segment ids 0 on padding), for models called as model.apply(vars, encoder_tokens,
    decoder_tokens, encoder_segment_ids, decode=True) (models/t5.py): runs the encoder and
    the start token (start_id; T5: 0) and caches every layer's cross-attention keys/values."""
    start_B1 = jnp.full((encoder_BS.shape[0], 1), start_id, jnp.int32)
    return _last_logits(model, params, cache, encoder_BS, start_B1, encoder_segment_ids_BS)


def encoder_decoder_step(model, params, cache, token_B, position_B):
    """(logits_BV, cache) after one decoder token per row at decoder position position_B
    (new token i sits at i + 1: the start token is 0); no encoder."""
    return _last_logits(model, params, cache, None, token_B[:, None],
                        decoder_positions_BT=position_B[:, None])


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "start_id", "pad_id"))
def encoder_decoder_program(model, params, encoder_BS, encoder_segment_ids_BS, key, rows_B2,
                            settings: Settings, stop_V, max_new_B, *, new_tokens: int,
                            start_id: int = 0, pad_id: int = 0):
    """New decoder tokens [B, new_tokens] for right-padded encoder inputs
    (encoder_decoder_prefill, then encoder_decoder_step per new token: the encoder runs
    once)."""
    TRACES["encoder_decoder"] += 1
    model, params = unrolled(model, params)
    b = encoder_BS.shape[0]
    cache = init_cache(model, jnp.zeros(encoder_BS.shape, jnp.int32),
                       jnp.zeros((b, new_tokens), jnp.int32))
    logits_BV, cache = encoder_decoder_prefill(model, params, cache, encoder_BS,
                                               encoder_segment_ids_BS, start_id=start_id)

    def step(cache, token_B, i):
        return encoder_decoder_step(model, params, cache, token_B,
                                    jnp.full((b,), i + 1, jnp.int32))

    return decode_loop(step, cache, logits_BV, row_keys(key, rows_B2), settings, stop_V,
                       max_new_B, new_tokens, pad_id)


# model family kind -> its decoding program; kinds absent here do not generate (encoders)
PROGRAMS = {"decoder": decoder_program, "encoder_decoder": encoder_decoder_program}
