"""A tiny mixture-of-experts decoder pretrained on the embedded corpus: Llama blocks whose every
other MLP is a mixture of 4 SwiGLU experts with top-2 routing and one shared expert, the
stack scanned in groups of 2 blocks (fmjax/nn/moe.py, fmjax/models/transformer.py).

Source:   fmjax's smoke configuration for config.model.moe (Mixtral-style routing, Jiang et al.
          2024; shared experts as DeepSeek-MoE, Dai et al. 2024); data = this interpreter's
          stdlib *.py files.
Command:  python -m fmjax.train --config=configs/moe_tiny.py --workdir=runs/moe_tiny
          (on 2+ devices add --config.mesh.expert=2: two experts per device)
Budget:   40 steps x 8 rows x 64 tokens = 20k tokens; about 30 s on a 2-core CPU, start-up and
          the first-time 512-piece tokenizer training included.
Expected: validation loss falls from 6.2 (about ln 512) to below 5.4; metrics.jsonl logs
          moe_load_balance (about 1.0: balanced), moe_router_z and moe_dropped (0: dropless)
          (checked in tests/e2e/test_moe_cli.py).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()  # every default is documented in fmjax/config.py
    c.model.family = "llama"
    c.model.vocab_size = 512
    c.model.seq_len = 64
    c.model.d_model = 64
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.d_ff = 128
    c.model.moe.num_experts = 4
    c.model.moe.top_k = 2
    c.model.moe.num_shared_experts = 1
    c.model.moe.interval = 2  # blocks 1 and 3 sparse; the scan's unit is a pair of blocks
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
