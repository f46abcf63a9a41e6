"""A tiny decoder pretrained as a prefix LM on the embedded corpus: bidirectional attention
over a random-length prefix of each document, causal loss on the rest, in about a minute on a
2-core CPU.

Source:   fmjax's smoke configuration for the prefix_lm objective (Raffel et al. 2020,
          section 3.2.1; Wang et al. 2022); data = this interpreter's stdlib *.py files.
Command:  python -m fmjax.train --config=configs/prefix_lm_tiny.py --workdir=runs/prefix_lm_tiny
          python -m fmjax.finetune --config=configs/finetune/default.py \
              --workdir=runs/prefix_lm_cls --config.init_from=runs/prefix_lm_tiny
Budget:   150 steps x 16 rows x 128 tokens = 0.3M tokens.
Expected: validation loss on the tokens after the prefix falls from ~6.3 (ln 512) to below 5
          (checked, at a shorter budget, in tests/e2e/test_families_cli.py).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()  # every default is documented in fmjax/config.py
    c.objective = "prefix_lm"  # fmjax/objectives/prefix_lm.py
    c.model.family = "llama"  # any decoder family takes a prefix mask
    c.model.vocab_size = 512
    c.tokenizer.train_chars = 1_000_000
    c.model.seq_len = 128
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.scan_layers = False
    c.train.steps = 150
    c.train.global_batch_size = 16
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.eval_batches = 4
    c.train.checkpoint_every = 50
    c.optim.learning_rate = 3e-3
    c.optim.warmup_steps = 10
    c.optim.schedule = "constant"
    c.train.sample_tokens = 16
    return c
