"""GPT-2 large, 774M (Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners", Table 2: 36 layers, d_model 1280; OpenAI's released checkpoint: 20 heads, context 1024,
vocab 50,257). Everything else as configs/gpt2_small.py.

Command:  python -m fmjax.train --config=configs/gpt2_large.py --workdir=gs://BUCKET/gpt2_large \
              --config.data.source=c4/en --config.tokenizer.path=gpt2.model
Budget:   ~10B tokens (19,073 steps x 512 x 1024), the budget of configs/gpt2_small.py, on a
          v5p-128 or a 16-64 GPU cluster.
Slice:    v5p-128, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 71.1 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 774,030,080 parameters (tied embeddings, biases in every
          dense and norm layer, learned positions 1024 x 1280).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "gpt2_small")
    c.model.d_model = 1280  # Table 2
    c.model.n_layers = 36  # Table 2
    c.model.n_heads = 20  # released checkpoint (head_dim 64)
    c.model.d_ff = 4 * 1280  # 4 x d_model
    c.optim.learning_rate = 2e-4  # GPT-3 paper Table 2.1, row of the nearest size (2.5e-4 there for the smaller neighbour)
    c.hardware.tpu_slice = "v5p-128"  # smallest slice with room for this run (header: Slice)
    return c
