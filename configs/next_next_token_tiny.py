"""A toy objective trained end to end: next-next-token prediction (docs/extending.md, "Adding an
objective"; fmjax/objectives/next_next_token.py) on a tiny GPT-2-family model.

Source:   none (a fork example); data = this interpreter's stdlib *.py files.
Command:  python -m fmjax.train --config=configs/next_next_token_tiny.py --workdir=runs/nnt
Budget:   40 steps x 8 rows x 64 tokens = 20k tokens; about 20 s on a 2-core CPU, start-up and
          the first-time 512-piece tokenizer training included.
Expected: validation loss falls from 6.2 (about ln 512) to about 5.0
          (checked in tests/e2e/test_new_objective.py).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()  # every default is documented in fmjax/config.py
    c.objective = "next_next_token"  # found by name: fmjax/objectives/next_next_token.py
    c.model.vocab_size = 512
    c.model.seq_len = 64
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.scan_layers = False
    c.tokenizer.train_chars = 1_000_000
    c.train.steps = 40
    c.train.global_batch_size = 8
    c.train.log_every = 5
    c.train.eval_every = 20
    c.train.eval_batches = 4
    c.train.checkpoint_every = 20
    c.train.sample_tokens = 16
    c.optim.warmup_steps = 5
    c.optim.schedule = "constant"
    return c
