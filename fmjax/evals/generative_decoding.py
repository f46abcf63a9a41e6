"""Batched greedy decoding of generate_until prompts on a loaded model (fmjax/evals/generative.py
scores the texts).

Prompts run `batch_rows` at a time, longest first (as the harness orders them), each batch
padded to the smallest power-of-two width (at least 16) that holds its longest prompt, and the
last batch filled with one-token dummies: a fixed, small set of compiled shapes (one per width)
however many prompts there are. A row stops at end-of-document or at a token whose own text
contains one of the task's stop strings; the batch ends when every row has stopped or after
max_new_tokens (a stop string spread over two tokens is still cut from the text afterwards, it
just does not end the batch early).

Lengths, as the harness's Hugging Face backend, within the model's length L (model.seq_len):
  * decoders (KV cache; a prefix-LM checkpoint reads the prompt as its bidirectional prefix):
    max_new_tokens = min(max_gen_toks, L // 2) and the prompt keeps its last L - max_new_tokens
    tokens (the harness keeps max_length - max_gen_toks; the cap at L // 2 only matters for
    models shorter than 2 * max_gen_toks);
  * encoder-decoders: the prompt (+ eos) keeps its last L tokens in the encoder, the decoder
    writes max_new_tokens = min(max_gen_toks, L) tokens from the start id 0.
Kinds absent from GENERATORS (encoders: BERT) cannot run generate_until tasks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from fmjax import models
from fmjax.generation import sampling
from fmjax.generation.texts import stop_table

MIN_WIDTH = 16


def width(longest: int, cap: int) -> int:
    """The compiled prompt width for a batch whose longest prompt has `longest` tokens."""
    return min(cap, max(MIN_WIDTH, 1 << max(longest - 1, 0).bit_length()))


def batches(prompts: Sequence[Sequence[int]], batch_rows: int):
    """Yields (indices into prompts, their token lists) `batch_rows` at a time, longest first;
    the last batch filled up with one-token prompts (index -1)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_rows):
        chunk = order[start:start + batch_rows]
        chunk = chunk + [-1] * (batch_rows - len(chunk))
        yield chunk, [list(prompts[i]) if i >= 0 else [0] for i in chunk]


def _cut_at_stop(row: Sequence[int], stop: np.ndarray) -> list[int]:
    """`row` through its first stop token (inclusive; the text cut removes the stop string)."""
    out = []
    for token in row:
        out.append(int(token))
        if stop[token]:
            break
    return out


def _decoder_rows(engine, params, rows, stop_V, max_new_tokens):
    """Left-padded batch through sampling.greedy_until."""
    w = width(max(len(r) for r in rows), engine.model_config.seq_len - max_new_tokens)
    tokens = np.zeros((len(rows), w), np.int32)
    segments = np.zeros((len(rows), w), np.int32)
    for i, row in enumerate(rows):
        tokens[i, w - len(row):], segments[i, w - len(row):] = row, 1
    return sampling.greedy_until(engine.model, params, tokens, segments, stop_V,
                                 max_new_tokens=max_new_tokens,
                                 prefix_lm=engine.config.objective == "prefix_lm")


def _encoder_decoder_rows(engine, params, rows, stop_V, max_new_tokens):
    """Right-padded encoder batch through sampling.generate_encoder_decoder (greedy)."""
    w = width(max(len(r) for r in rows), engine.model_config.seq_len)
    tokens = np.zeros((len(rows), w), np.int32)
    segments = np.zeros((len(rows), w), np.int32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)], segments[i, :len(row)] = row, 1
    return sampling.generate_encoder_decoder(
        engine.model, params, tokens, jax.random.PRNGKey(0), max_new_tokens=max_new_tokens,
        start_id=0, pad_id=0, encoder_segment_ids_BS=segments, stop_V=stop_V)


def _decoder_prompt(tokenizer, prefix_ids, text):
    return list(prefix_ids) + tokenizer.encode(text)


def _encoder_decoder_prompt(tokenizer, prefix_ids, text):
    return sampling.encoder_prompt_ids(tokenizer, text)


# model family kind -> (prompt ids(tokenizer, prefix_ids, text), run a padded batch,
# (max prompt tokens, max new tokens) from (model length L, max_gen_toks))
GENERATORS = {
    "decoder": (_decoder_prompt, _decoder_rows,
                lambda length, gen: (length - min(gen, length // 2), min(gen, length // 2))),
    "encoder_decoder": (_encoder_decoder_prompt, _encoder_decoder_rows,
                        lambda length, gen: (length, min(gen, length))),
}


def text_generator(engine, tokenizer, batch_rows: int = 8, prefix_ids: Sequence[int] = ()):
    """generate(params, prompts, generation, progress) -> (continuations, prompts truncated)
    for the engine's model (a kind in GENERATORS); each continuation is the text of its new
    tokens through the first stop token, uncut (generative.answer cuts it)."""
    kind = models.get_family(engine.model_config.family).kind
    encode, run, lengths = GENERATORS[kind]
    vocab = engine.model_config.vocab_size
    tables: dict[tuple[str, ...], np.ndarray] = {}

    def generate(params, prompts: Sequence[str], generation,
                 progress: Callable[[int, int], None] | None = None):
        max_prompt, max_new = lengths(engine.model_config.seq_len, generation.max_gen_toks)
        if generation.until not in tables:
            tables[generation.until] = stop_table(tokenizer, vocab, generation.until)
        stop = tables[generation.until]
        ids = [encode(tokenizer, prefix_ids, p) for p in prompts]
        truncated = sum(len(i) > max_prompt for i in ids)
        ids = [i[-max_prompt:] for i in ids]
        texts = [""] * len(prompts)
        done = 0
        for chunk, rows in batches(ids, batch_rows):
            out = np.asarray(run(engine, params, rows, stop, max_new))
            for index, row in zip(chunk, out):
                if index >= 0:
                    kept = [t for t in _cut_at_stop(row, stop) if t < tokenizer.vocab_size]
                    texts[index] = tokenizer.decode(kept)
            done += sum(i >= 0 for i in chunk)
            if progress is not None:
                progress(done, len(prompts))
        return texts, truncated
    return generate
