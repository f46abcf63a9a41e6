"""Text in and out of generation: a prompt's token ids per model kind, the text of new tokens
(T5's sentinels as <extra_id_k>), and stop strings (a table of the tokens that end a row
early, and the cut of the text at the first stop string)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def decoder_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The tokenizer's prefix ids (fmjax's and Llama's: bos; GPT-2's: none) + the prompt's
    pieces; an empty result becomes [eos] (GPT-2 starts from <|endoftext|>)."""
    return [*tokenizer.prefix_ids, *tokenizer.encode(prompt)] or [tokenizer.eos_id]


def encoder_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """An encoder-decoder's input for `prompt`: [bos] (only when the tokenizer has one) +
    pieces + [eos], the layout of a packed pretraining document (data/packing.py) and, with a
    T5 SentencePiece (no bos), exactly what HF's T5 tokenizer gives `model.generate`."""
    bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
    return bos + tokenizer.encode(prompt) + [tokenizer.eos_id]


def continuation_text(tokenizer, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The text `new_ids` add after `prompt_ids`: decoded together and the prompt's text cut
    off, so a piece that starts with a space (SentencePiece's ▁) keeps it; the new ids alone
    when the joint text does not start with the prompt's."""
    head = tokenizer.decode(list(prompt_ids))
    full = tokenizer.decode([*prompt_ids, *new_ids])
    return full[len(head):] if full.startswith(head) else tokenizer.decode(list(new_ids))


def decode_with_sentinels(tokenizer, ids: Sequence[int], config) -> str:
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


def stop_table(tokenizer, vocab_size: int, stops: Sequence[str], eos: bool = True) -> np.ndarray:
    """bool [vocab_size]: eos (if `eos`) and every token whose own text contains a stop
    string: the tokens after which a row stops early. A stop string spread over two tokens is
    not in the table; cut_at_stop still cuts the text there."""
    table = np.zeros(vocab_size, bool)
    stops = [s for s in stops if s]
    if stops:
        for token in range(min(vocab_size, tokenizer.vocab_size)):
            text = tokenizer.decode([token])
            table[token] = any(s in text for s in stops)
    if eos and 0 <= tokenizer.eos_id < vocab_size:
        table[tokenizer.eos_id] = True
    return table


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one was found)."""
    ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[:min(ends)], True) if ends else (text, False)
