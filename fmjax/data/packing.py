"""Documents -> token streams -> chunks of at most T tokens -> packed rows of exactly T tokens.

A packed row holds several chunks back to back: `segment_ids` numbers them 1, 2, 3, ... within
the row (0 marks padding) and `positions` counts 0, 1, ... from the start of each chunk (0 at
padding). Chunks of one document are consecutive T-token slices of `[bos] + ids + [eos]`, so
every segment in a row is a contiguous slice of one document's token stream.
"""
from __future__ import annotations

import grain
import numpy as np

TOKENS, SEGMENT_IDS, POSITIONS = "tokens", "segment_ids", "positions"


class TokenizeDocument(grain.transforms.Map):
    """{'text': str} -> {'tokens': int32 [bos] + encode(text) + [eos]}."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def map(self, element):
        ids = self.tokenizer.encode(element["text"])
        tokens_L = np.asarray([self.tokenizer.bos_id, *ids, self.tokenizer.eos_id], np.int32)
        return {TOKENS: tokens_L}


class ChunkDocument(grain.experimental.FlatMapTransform):
    """{'tokens': [L]} -> [{'tokens': [<=T]}, ...]: consecutive slices of at most T tokens."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.max_fan_out = 1 << 20  # Only MapDataset.flat_map uses it; chunking is on IterDataset.

    def flat_map(self, element):
        tokens_L = element[TOKENS]
        return [{TOKENS: tokens_L[start:start + self.seq_len]}
                for start in range(0, len(tokens_L), self.seq_len)]


def rename_packed(row):
    """grain names packing outputs '<feature>_segment_ids'; fmjax batches use short names."""
    return {TOKENS: row[TOKENS], SEGMENT_IDS: row[f"{TOKENS}_segment_ids"],
            POSITIONS: row[f"{TOKENS}_positions"]}


def pack_documents(token_streams: grain.IterDataset, *, seq_len: int, pad_id: int,
                   num_bins: int) -> grain.IterDataset:
    """Token streams -> rows {'tokens', 'segment_ids', 'positions'}, each int32 [T].

    First-fit packing over `num_bins` open rows (grain's FirstFitPackIterDataset, whose state is
    its parent's position plus a row counter, so it is checkpointable). More bins means less
    padding but more documents in flight.
    """
    chunks = grain.experimental.FlatMapIterDataset(token_streams, ChunkDocument(seq_len))
    packed = grain.experimental.FirstFitPackIterDataset(
        chunks, length_struct={TOKENS: seq_len}, num_packing_bins=num_bins,
        padding_struct={TOKENS: pad_id}, shuffle_bins=False)
    return packed.map(rename_packed)
