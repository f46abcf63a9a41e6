"""Llama 3 8B (configs/llama3_8b.py) trained on 32,768-token rows: the long-context stage of
Llama Team 2024, "The Llama 3 Herd of Models", section 3.4.2 (context extended from 8K in
steps up to 128K; RoPE base 500,000 is already the 8B's) and its context parallelism (section
3.3.2: all-gather of keys and values, load-balanced causal chunks; fmjax:
docs/long-context.md).

Command:  python -m fmjax.train --config=configs/llama3_8b_32k.py \
              --workdir=gs://BUCKET/llama3_8b_32k --config.data.source=c4/en \
              --config.tokenizer.path=llama3_tokenizer.model
Budget:   4M tokens per step (128 rows x 32,768), as the 8K config; a smoke run is 1,000 steps.
          The sequence is split over mesh.context = 4 (8,192 tokens of each row per chip), the
          state over fsdp = the rest; 4 microbatches.
Slice:    v5p-128 (python -m fmjax.preflight: 63.4 of 95.7 GiB per chip, 121 s to compile);
          also a v5p-64 with --config.train.microbatches=8 (70.4 GiB, --fast) and a v5p-256
          with 2 (59.2 GiB).
Expected: python -m fmjax.info reports 8,030,261,248 parameters (the 8K model's).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "llama3_8b")
    c.model.seq_len = 32768  # section 3.4.2's first long-context step beyond 8K
    c.train.global_batch_size = 128  # 4M tokens per step, as at 8K
    c.train.microbatches = 4  # 32 rows per pass: 2 per chip on a v5p-128
    c.mesh.context = 4  # the sequence split 4 ways (zigzag chunks of 4,096 tokens)
    c.mesh.data = 1
    c.mesh.fsdp = -1  # the rest: 16 on a v5p-128
    c.hardware.tpu_slice = "v5p-128"  # smallest slice with room for this run (header: Slice)
    return c
