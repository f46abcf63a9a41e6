"""Llama 2 7B (Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models",
Table 1 and Section 2.2: 32 layers, d_model 4096, 32 heads, SwiGLU 11008, context 4096,
vocab 32,000, untied output).

Command:  python -m fmjax.train --config=configs/llama2_7b.py --workdir=gs://BUCKET/llama2_7b \
              --config.data.source=c4/en --config.tokenizer.path=llama2_tokenizer.model \
              --config.mesh.fsdp=-1 --config.mesh.data=1
Budget:   2T tokens in the paper (184,320 A100 GPU-hours); as a smoke run, 1,000 steps on a
          v5p-128 (the state is 6.7B x 16 bytes = 108 GB: shard it with fsdp).
Slice:    v5p-512, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 61.4 of 95.7 GiB per chip); on a v5p-128 add --config.train.microbatches=4 (61 GiB).
Expected: python -m fmjax.info reports 6,738,415,616 parameters.
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 32000  # Llama SentencePiece vocabulary
    c.model.seq_len = 4096  # context length (Table 1)
    c.model.d_model = 4096
    c.model.n_layers = 32
    c.model.n_heads = 32
    c.model.n_kv_heads = 32  # GQA only in 34B / 70B (Table 1)
    c.model.d_ff = 11008  # 2/3 x 4D rounded to 256
    c.model.norm_eps = 1e-5
    c.model.rope_theta = 10000.0
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots_no_batch"
    c.train.steps = 500_000  # 2T tokens / (4M tokens per step), Section 2.2
    c.train.global_batch_size = 1024  # 4M tokens per step at 4096 tokens
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.learning_rate = 3e-4  # Section 2.2
    c.optim.warmup_steps = 2000
    c.optim.min_lr_ratio = 0.1
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.95, 1e-5
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.hardware.tpu_slice = "v5p-512"  # smallest slice with room for this run (header: Slice)
    return c
