"""Llama 3 8B (Llama Team 2024, "The Llama 3 Herd of Models", Table 3: 32 layers, d_model 4096,
FFN 14,336, 32 heads with 8 key/value heads, RoPE base 500,000, vocab 128,256; the released
checkpoint: context 8192, untied output, RMSNorm eps 1e-5).

Command:  python -m fmjax.train --config=configs/llama3_8b.py --workdir=gs://BUCKET/llama3_8b \
              --config.data.source=c4/en --config.tokenizer.path=llama3_tokenizer.model \
              --config.mesh.fsdp=-1 --config.mesh.data=1
Budget:   15T tokens in the paper; as a smoke run, 1,000 steps on a v5p-256 (the state is
          8.0B x 16 bytes = 128 GB: shard it with fsdp). Everything else as configs/llama2_7b.py.
Slice:    v5p-1024, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 39.6 of 95.7 GiB per chip); on a v5p-256 add --config.train.microbatches=4 (41 GiB).
Expected: python -m fmjax.info reports 8,030,261,248 parameters.
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "llama2_7b")
    c.model.vocab_size = 128256  # Table 3 (tiktoken-based 128K vocabulary)
    c.model.seq_len = 8192  # context length of the pretrained checkpoint
    c.model.n_kv_heads = 8  # grouped-query attention (Table 3)
    c.model.d_ff = 14336  # Table 3
    c.model.rope_theta = 500000.0  # Table 3
    c.train.global_batch_size = 512  # 4M tokens per step at 8192 tokens (Table 4: 4M initially)
    c.optim.learning_rate = 3e-4  # Table 3
    c.optim.warmup_steps = 8000  # Section 3.4.1
    c.hardware.tpu_slice = "v5p-1024"  # smallest slice with room for this run (header: Slice)
    return c
