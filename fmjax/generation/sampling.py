"""Autoregressive decoding: decoders with a KV cache (and a cache-free reference for tests);
encoder-decoders (T5) by recomputing the decoder over a fixed-length buffer each step.

`sample_texts` dispatches on the model family's kind through `TEXT_SAMPLERS` (kind -> sampler);
a new kind that generates text adds an entry there, never a branch on family names."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fmjax import models


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


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "prefix_lm"))
def greedy_until(model, params, prompt_BP, segment_ids_BP, stop_V, *, max_new_tokens: int,
                 prefix_lm: bool = False):
    """Greedy continuations of a batch of left-padded prompts of different lengths -> new tokens
    [B, max_new_tokens]. segment_ids_BP: 1 on each prompt's tokens, 0 on its left padding (never
    attended to); each prompt's positions start at 0 at its first token. Decoding ends once every
    row has produced a token with stop_V[token] (bool [V]; the caller cuts each row there), or
    after max_new_tokens; a row's tokens after its stop are junk to cut. prefix_lm: the prompt is
    the bidirectional prefix (models trained with objective=prefix_lm)."""
    b, p = prompt_BP.shape
    cache = init_cache(model, b, p + max_new_tokens)
    lengths_B = jnp.sum(segment_ids_BP, axis=1)
    positions_BP = jnp.maximum(jnp.cumsum(segment_ids_BP, axis=1) - 1, 0)
    prefix = {"prefix_mask_BT": segment_ids_BP} if prefix_lm else {}
    logits_BPV, mutated = model.apply({"params": params, "cache": cache}, prompt_BP,
                                      segment_ids_BP, positions_BP, decode=True,
                                      mutable=["cache"], **prefix)

    def cond(carry):
        i, _, _, _, done_B = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, cache, logits_BV, out_BN, done_B = carry
        token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        out_BN = jax.lax.dynamic_update_index_in_dim(out_BN, token_B, i, axis=1)
        logits_B1V, mutated = model.apply(
            {"params": params, "cache": cache}, token_B[:, None], jnp.ones((b, 1), jnp.int32),
            (lengths_B + i)[:, None], decode=True, mutable=["cache"])
        return i + 1, mutated["cache"], logits_B1V[:, -1], out_BN, done_B | stop_V[token_B]

    carry = (jnp.int32(0), mutated["cache"], logits_BPV[:, -1],
             jnp.zeros((b, max_new_tokens), jnp.int32), jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, carry)[3]


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


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k",
                                             "top_p"))
def generate_encoder_decoder(model, params, encoder_BS, rng, *, max_new_tokens: int,
                             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                             eos_id: int = -1, start_id: int = 0, pad_id: int = 0,
                             encoder_segment_ids_BS=None, stop_V=None):
    """encoder tokens [B, S] -> new decoder tokens [B, max_new_tokens], for encoder-decoder
    models called as `model.apply(vars, encoder_tokens_BS, decoder_tokens_BT)` (models/t5.py).

    The decoder inputs live in a buffer [B, max_new_tokens + 1] that starts with `start_id`
    (T5: 0 = pad, HF's decoder_start_token_id); step i runs the model on the whole buffer and
    picks token i from the logits at position i, which the causal decoder computes from
    positions <= i only, so the not-yet-written tail never matters. No cache: each step
    recomputes the model (encoder included; XLA may hoist the loop-invariant encoder out of the
    loop, nothing relies on it). A row stops at its first `eos_id` (kept in the output; the
    positions after it are `pad_id`, as HF's generate pads finished rows) and the loop ends
    once every row has stopped. Sampling as `generate`: temperature 0 = greedy, else
    temperature / top_k / top_p with the step's key fold_in(rng, i). encoder_segment_ids_BS:
    0 on padding the encoder never attends to (prompts of different lengths in one batch);
    stop_V (bool [V]): a row also stops at a token with stop_V[token] (fmjax/evals)."""
    b = encoder_BS.shape[0]
    buffer_BL = jnp.full((b, max_new_tokens + 1), pad_id, jnp.int32).at[:, 0].set(start_id)

    def cond(carry):
        i, _, done_B = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, buffer_BL, done_B = carry
        logits_BLV = model.apply({"params": params}, encoder_BS, buffer_BL,
                                 encoder_segment_ids_BS)
        logits_BV = jax.lax.dynamic_index_in_dim(logits_BLV, i, axis=1, keepdims=False)
        token_B = _pick(logits_BV, jax.random.fold_in(rng, i), temperature, top_k, top_p)
        token_B = jnp.where(done_B, pad_id, token_B)
        buffer_BL = jax.lax.dynamic_update_index_in_dim(buffer_BL, token_B, i + 1, axis=1)
        stop_B = (token_B == eos_id) if stop_V is None else stop_V[token_B]
        return i + 1, buffer_BL, done_B | stop_B

    _, buffer_BL, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), buffer_BL, jnp.zeros((b,), bool)))
    return buffer_BL[:, 1:]


def _cut_at_eos(row: list[int], eos_id: int) -> list[int]:
    return row[:row.index(eos_id)] if eos_id in row else row


def _sample_decoder(engine, params, tokenizer, prompt, *, max_new_tokens, num_samples, rng,
                    **sampling_kw) -> list[str]:
    """The tokenizer's prefix ids (fmjax's and Llama's: bos; GPT-2's: none) + prompt (an empty
    one: eos, as GPT-2 starts from <|endoftext|>), continued with the KV cache; each text is
    the prompt + its continuation."""
    ids = [*tokenizer.prefix_ids, *tokenizer.encode(prompt)] or [tokenizer.eos_id]
    cfg = engine.model_config
    if models.get_family(cfg.family).position_params(cfg):  # learned positions end there
        max_new_tokens = max(0, min(max_new_tokens, cfg.max_positions - len(ids)))
    prompt_BP = np.asarray([ids] * num_samples, np.int32)
    out_BN = np.asarray(generate(engine.model, params, prompt_BP, rng,
                                 max_new_tokens=max_new_tokens, **sampling_kw))
    return [prompt + tokenizer.decode(_cut_at_eos(row, tokenizer.eos_id))
            for row in out_BN.tolist()]


def encoder_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """An encoder-decoder's input for `prompt`: [bos] (only when the tokenizer has one) +
    pieces + [eos], the layout of a packed pretraining document (data/packing.py) and, with a
    T5 SentencePiece (no bos), exactly what HF's T5 tokenizer gives `model.generate`."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
    return bos + tokenizer.encode(prompt) + [tokenizer.eos_id]


def decode_with_sentinels(tokenizer, ids: list[int], config) -> str:
    """Text of `ids` where the ids past the tokenizer's pieces (which SentencePiece cannot
    decode) appear as `<extra_id_k>` for sentinel k (objectives/span_corruption.py sentinel_id;
    HF's T5 tokenizer writes its sentinels so) and other extra ids are dropped."""
    from fmjax.objectives import span_corruption
    pieces = config.model.vocab_size - config.tokenizer.extra_ids
    first, count = span_corruption.sentinel_id(config, 0), span_corruption.sentinel_count(config)
    parts, run = [], []
    for token in ids:
        if token < pieces:
            run.append(token)
            continue
        if run:
            parts.append(tokenizer.decode(run))
            run = []
        if 0 <= first - token < count:
            parts.append(f"<extra_id_{first - token}>")
    if run:
        parts.append(tokenizer.decode(run))
    return "".join(parts)


def _sample_encoder_decoder(engine, params, tokenizer, prompt, *, max_new_tokens, num_samples,
                            rng, **sampling_kw) -> list[str]:
    """The prompt encoded, the decoder run from start id 0 to eos; each text is the decoder's
    output alone (a translation / answer / span fill, not a continuation of the prompt)."""
    encoder_BS = np.asarray([encoder_prompt_ids(tokenizer, prompt)] * num_samples, np.int32)
    out_BN = np.asarray(generate_encoder_decoder(
        engine.model, params, encoder_BS, rng, max_new_tokens=max_new_tokens,
        eos_id=tokenizer.eos_id, start_id=0, pad_id=0, **sampling_kw))
    return [decode_with_sentinels(tokenizer, _cut_at_eos(row, tokenizer.eos_id), engine.config)
            for row in out_BN.tolist()]


class CannotGenerate(ValueError):
    """The model's family kind has no entry in TEXT_SAMPLERS (an encoder such as BERT)."""


# model family kind -> sampler(engine, params, tokenizer, prompt, *, max_new_tokens,
# num_samples, rng, temperature, top_k, top_p) -> texts; kinds absent here do not generate
TEXT_SAMPLERS = {"decoder": _sample_decoder, "encoder_decoder": _sample_encoder_decoder}


def sample_texts(engine, params, tokenizer, prompt: str, *, max_new_tokens: int,
                 temperature: float = 0.8, top_k: int = 0, top_p: float = 1.0,
                 num_samples: int = 1, seed: int = 0) -> list[str]:
    """`num_samples` texts for `prompt`, each cut at the first end-of-document: a decoder's
    continuation (starting with the prompt), an encoder-decoder's output."""
    family = engine.model_config.family
    kind = models.get_family(family).kind
    if kind not in TEXT_SAMPLERS:
        raise CannotGenerate(f"model.family = {family!r} is an {kind} model, which does not "
                         f"generate text; generation needs a model of kind "
                         f"{' or '.join(TEXT_SAMPLERS)}")
    return TEXT_SAMPLERS[kind](engine, jax.device_get(params), tokenizer, prompt,
                               max_new_tokens=max_new_tokens, num_samples=num_samples,
                               rng=jax.random.PRNGKey(seed), temperature=temperature,
                               top_k=top_k, top_p=top_p)
