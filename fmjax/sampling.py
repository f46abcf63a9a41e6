"""Autoregressive decoding with a KV cache (and a cache-free reference for tests)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def filter_logits(logits_BV, temperature: float, top_k: int, top_p: float):
    """Temperature, then keep the top_k most likely and the smallest set with mass >= top_p."""
    logits_BV = logits_BV / jnp.maximum(temperature, 1e-6)
    if top_k > 0:
        kth_BV = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_BV, -jnp.inf, logits_BV)
    if 0.0 < top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        cum_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
        # the smallest logit still inside the nucleus (always keep the top token)
        keep_BV = (cum_BV - jax.nn.softmax(sorted_BV, axis=-1)) < top_p
        cutoff_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return logits_BV


def _pick(logits_BV, rng, temperature, top_k, top_p):
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, filter_logits(logits_BV, temperature, top_k, top_p)
                                  ).astype(jnp.int32)


def init_cache(model, batch: int, max_len: int):
    tokens = jnp.zeros((batch, max_len), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k",
                                             "top_p"))
def generate(model, params, prompt_BP, rng, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0):
    """prompt [B, P] -> new tokens [B, max_new_tokens], decoding one token per step from the cache."""
    b, p = prompt_BP.shape
    cache = init_cache(model, b, p + max_new_tokens)

    def run(cache, tokens_BT, start):
        t = tokens_BT.shape[1]
        positions_BT = jnp.broadcast_to(start + jnp.arange(t), (b, t))
        logits_BTV, mutated = model.apply({"params": params, "cache": cache}, tokens_BT,
                                          jnp.ones_like(tokens_BT), positions_BT, decode=True,
                                          mutable=["cache"])
        return logits_BTV[:, -1], mutated["cache"]

    logits_BV, cache = run(cache, prompt_BP, 0)

    def body(i, carry):
        cache, logits_BV, out_BN = carry
        token_B = _pick(logits_BV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
        out_BN = out_BN.at[:, i].set(token_B)
        logits_BV, cache = run(cache, token_B[:, None], p + i)
        return cache, logits_BV, out_BN

    out_BN = jnp.zeros((b, max_new_tokens), jnp.int32)
    _, _, out_BN = jax.lax.fori_loop(0, max_new_tokens, body, (cache, logits_BV, out_BN))
    return out_BN


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_without_cache(model, params, prompt_BP, max_new_tokens: int):
    """Reference for tests: every new token re-runs the whole (causal) sequence, no cache."""
    b, p = prompt_BP.shape
    tokens_BL = jnp.concatenate([prompt_BP, jnp.zeros((b, max_new_tokens), jnp.int32)], axis=1)

    def body(i, tokens_BL):
        logits_BLV = model.apply({"params": params}, tokens_BL)
        next_B = jnp.argmax(logits_BLV[:, p + i - 1], axis=-1).astype(jnp.int32)
        return tokens_BL.at[:, p + i].set(next_B)

    return jax.lax.fori_loop(0, max_new_tokens, body, tokens_BL)[:, p:]


def sample_texts(engine, params, tokenizer, prompt: str, *, max_new_tokens: int,
                 temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                 num_samples: int = 1, seed: int = 0) -> list[str]:
    """Continuations of `prompt` (which they start with), cut at the first end-of-document."""
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    if engine.model_config.family == "gpt2":  # learned positions end at max_positions
        max_new_tokens = max(0, min(max_new_tokens, engine.model_config.max_positions - len(ids)))
    prompt_BP = np.asarray([ids] * num_samples, np.int32)
    out_BN = np.asarray(generate(engine.model, jax.device_get(params), prompt_BP,
                                 jax.random.PRNGKey(seed), max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, top_p=top_p))
    texts = []
    for row in out_BN.tolist():
        if tokenizer.eos_id in row:
            row = row[:row.index(tokenizer.eos_id)]
        texts.append(prompt + tokenizer.decode(row))
    return texts
