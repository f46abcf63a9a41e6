"""GPT-2 small, 124M (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners", Table 2: 12 layers, d_model 768; OpenAI's released checkpoint: 12 heads, context 1024,
vocab 50,257).

Command:  python -m fmjax.train --config=configs/gpt2_small.py --workdir=gs://BUCKET/gpt2_small \
              --config.data.source=c4/en --config.tokenizer.path=gpt2.model
Budget:   ~10B tokens (nanoGPT / llm.c reproduction: 19,073 steps x 512 x 1024) on a v5p-32
          or 8 x H100 for about a day.
Slice:    v5p-32, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 49.6 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 124,439,808 parameters (tied embeddings, bias in every
          dense and norm layer, learned positions 1024 x 768); validation loss ~3.3 on web text.
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.model.family = "gpt2"
    c.model.vocab_size = 50257  # GPT-2 BPE vocabulary
    c.model.seq_len = 1024  # context length
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.d_ff = 3072  # 4 x d_model
    c.model.norm_eps = 1e-5
    c.model.dtype = "bfloat16"
    c.tokenizer.train_chars = 100_000_000
    c.train.steps = 19073  # 10B tokens at 512 x 1024 per step (llm.c GPT-2 124M)
    c.train.global_batch_size = 512
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.learning_rate = 6e-4  # GPT-3 paper Table 2.1, 125M row
    c.optim.warmup_steps = 700
    c.optim.min_lr_ratio = 0.1
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.1
    c.hardware.tpu_slice = "v5p-32"  # smallest slice with room for this run (header: Slice)
    return c
