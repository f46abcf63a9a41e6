"""T5.1.1-Base, 248M (google-research/text-to-text-transfer-transformer,
released_checkpoints.md "T5.1.1" and the released gin / HF config.json: 12 + 12 layers,
d_model 768, 12 heads, d_kv 64, d_ff 2048, GeGLU, untied output, no pre-training dropout);
the rest as configs/t5_1_1_small.py.

Command:  python -m fmjax.train --config=configs/t5_1_1_base.py \
              --workdir=gs://BUCKET/t5_1_1_base --config.data.source=c4/en \
              --config.tokenizer.path=t5_spiece.model
Budget:   1,000,000 steps x 2,048 x 512 ~ 1T tokens of C4 (T5's recipe).
Slice:    v5p-64, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 50.3 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 247,577,856 parameters.
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "t5_1_1_small")
    c.model.d_model = 768  # released config
    c.model.n_layers = 12  # encoder blocks
    c.model.n_decoder_layers = 12  # decoder blocks
    c.model.n_heads = 12  # released config
    c.model.d_ff = 2048  # released config
    c.hardware.tpu_slice = "v5p-64"  # smallest slice with room for this run (header: Slice)
    return c
