"""A tiny long-context decoder pretrained on the embedded corpus with its sequence split over
two devices (context parallelism, mesh.context = 2): 1,024-token packed rows in zigzag order,
keys and values all-gathered per layer (fmjax/nn/context_attention.py, docs/long-context.md).

Source:   fmjax's smoke configuration for config.mesh.context; data = this interpreter's
          stdlib *.py files (long files fill whole rows, short ones are packed).
Command:  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m fmjax.train \
              --config=configs/long_context_tiny.py --workdir=runs/long_context_tiny
          (on 4+ devices --config.mesh.context=4 also works: 1024 = 128 x 2 x 4)
Budget:   30 steps x 4 rows x 1,024 tokens = 0.12M tokens; about 30 s on a 2-core CPU, start-up
          and the first-time 512-piece tokenizer training included.
Expected: validation loss falls from 6.2 (about ln 512) by more than 0.8 (checked in
          tests/e2e/test_long_context_cli.py).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()  # every default is documented in fmjax/config.py
    c.model.family = "llama"  # RoPE: positions travel with their tokens into the zigzag order
    c.model.vocab_size = 512
    c.tokenizer.train_chars = 1_000_000
    c.model.seq_len = 1024  # a multiple of 2 x mesh.context (causal load balancing)
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.n_kv_heads = 2
    c.model.scan_layers = False
    c.mesh.context = 2  # the sequence split over 2 devices
    c.mesh.data = -1  # the rest (1 on 2 devices)
    c.train.steps = 30
    c.train.global_batch_size = 4
    c.train.log_every = 5
    c.train.eval_every = 15
    c.train.eval_batches = 2
    c.train.checkpoint_every = 30
    c.train.sample_tokens = 16
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 5
    c.optim.schedule = "constant"
    return c
