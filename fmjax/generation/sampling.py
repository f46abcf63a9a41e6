"""Array-level decoding entry points over the compiled programs of decoding.py (all with a KV
cache), and `sample_texts`, the one-prompt text sampler of fmjax.generate and the training
loop's samples (server.Generator underneath).

  generate                  decoder, prompts of one length [B, P] -> new tokens [B, N]
  greedy_until              decoder, left-padded prompts + stop table (fmjax/evals)
  generate_encoder_decoder  encoder-decoder (T5), right-padded encoder inputs -> decoder tokens
  greedy_without_cache      decoder reference for tests: the whole sequence every step
Sampling everywhere: temperature 0 = greedy, else temperature / top_k / top_p; row b's step i
draws with fold_in(fold_in(fold_in(rng, b), 0), i)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fmjax.generation import decoding, server
from fmjax.generation.decoding import filter_logits, init_cache  # noqa: F401 (API)
from fmjax.generation.server import BadRequest, CannotGenerate  # noqa: F401 (API)
from fmjax.generation.texts import decode_with_sentinels, encoder_prompt_ids  # noqa: F401 (API)

# model family kind -> its layout; kinds absent here do not generate text
TEXT_SAMPLERS = server.KINDS


def _rows(b: int):
    return np.stack([np.arange(b), np.zeros(b, int)], axis=1).astype(np.int32)


def _budget(b: int, n: int):
    return np.full((b,), n, np.int32)


def generate(model, params, prompt_BP, rng, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0):
    """prompt [B, P] (no padding) -> new tokens [B, max_new_tokens]; no stop token."""
    b, p = prompt_BP.shape
    never_V = np.zeros(model.cfg.vocab_size, bool)
    return decoding.decoder_program(
        model, params, prompt_BP, np.ones((b, p), np.int32), rng, _rows(b),
        decoding.Settings.make(temperature, top_k, top_p), never_V, _budget(b, max_new_tokens),
        new_tokens=max_new_tokens)


def greedy_until(model, params, prompt_BP, segment_ids_BP, stop_V, *, max_new_tokens: int,
                 prefix_lm: bool = False):
    """Greedy continuations of left-padded prompts (segment_ids_BP: 1 on a prompt's tokens, 0
    on its padding; positions start at 0 at each prompt's first token) -> new tokens
    [B, max_new_tokens]; a row stops after a token with stop_V[token] (bool [V]) and is 0
    from then on. prefix_lm: the prompt is the bidirectional prefix."""
    b = prompt_BP.shape[0]
    return decoding.decoder_program(
        model, params, prompt_BP, segment_ids_BP, jax.random.PRNGKey(0), _rows(b),
        decoding.Settings.make(), stop_V, _budget(b, max_new_tokens), new_tokens=max_new_tokens,
        prefix_lm=prefix_lm)


def generate_encoder_decoder(model, params, encoder_BS, rng, *, max_new_tokens: int,
                             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                             eos_id: int = -1, start_id: int = 0, pad_id: int = 0,
                             encoder_segment_ids_BS=None, stop_V=None):
    """encoder tokens [B, S] -> new decoder tokens [B, max_new_tokens] (models/t5.py), the
    encoder run once and the decoder from `start_id` with its self- and cross-attention keys
    and values cached. A row stops at its first `eos_id` (kept; `pad_id` after it, as HF's
    generate pads finished rows) or at a token with stop_V[token] (bool [V]);
    encoder_segment_ids_BS: 0 on padding the encoder never attends to."""
    b, s = encoder_BS.shape
    if stop_V is None:
        stop_V = np.zeros(model.cfg.vocab_size, bool)
        if 0 <= eos_id < stop_V.size:
            stop_V[eos_id] = True
    if encoder_segment_ids_BS is None:
        encoder_segment_ids_BS = np.ones((b, s), np.int32)
    return decoding.encoder_decoder_program(
        model, params, encoder_BS, encoder_segment_ids_BS, rng, _rows(b),
        decoding.Settings.make(temperature, top_k, top_p), stop_V, _budget(b, max_new_tokens),
        new_tokens=max_new_tokens, start_id=start_id, pad_id=pad_id)


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
                 num_samples: int = 1, seed: int = 0, stop=()) -> list[str]:
    """`num_samples` texts for `prompt`, each cut at end-of-document (and before a stop
    string): a decoder's prompt + continuation, an encoder-decoder's output."""
    generator = server.Generator.from_engine(engine, params, tokenizer)
    completions = generator.generate([prompt], max_new_tokens=max_new_tokens,
                                     num_return_sequences=num_samples, temperature=temperature,
                                     top_k=top_k, top_p=top_p, seed=seed, stop=stop)[0]
    head = prompt if generator.continues_prompt else ""
    return [head + c.text for c in completions]
