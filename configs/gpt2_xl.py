"""GPT-2 xl, 1.5B (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners", Table 2: 48 layers, d_model 1600; OpenAI's released checkpoint: 25 heads, context 1024,
vocab 50,257). Everything else as configs/gpt2_small.py.

Command:  python -m fmjax.train --config=configs/gpt2_xl.py --workdir=gs://BUCKET/gpt2_xl \
              --config.data.source=c4/en --config.tokenizer.path=gpt2.model
Budget:   ~10B tokens (19,073 steps x 512 x 1024), the budget of configs/gpt2_small.py, on a
          v5p-256 or a 16-64 GPU cluster.
Slice:    v5p-256, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 74.7 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 1,557,611,200 parameters (tied embeddings, biases in every
          dense and norm layer, learned positions 1024 x 1600).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "gpt2_small")
    c.model.d_model = 1600  # Table 2
    c.model.n_layers = 48  # Table 2
    c.model.n_heads = 25  # released checkpoint (head_dim 64)
    c.model.d_ff = 4 * 1600  # 4 x d_model
    c.optim.learning_rate = 1e-4  # GPT-3 paper Table 2.1, row of the nearest size (2e-4 there for the smaller neighbour)
    c.hardware.tpu_slice = "v5p-256"  # smallest slice with room for this run (header: Slice)
    return c
