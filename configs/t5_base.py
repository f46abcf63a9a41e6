"""T5-Base v1.0, 220M (Raffel et al. 2020, JMLR, Section 3.7 "Model sizes": 12 + 12 layers,
d_model 768, 12 heads, d_kv 64, d_ff 3072 (the paper's baseline, Section 3.1.1); vocab 32,128
as configs/t5_small.py, whose recipe this is).

Command:  python -m fmjax.train --config=configs/t5_base.py --workdir=gs://BUCKET/t5_base \
              --config.data.source=c4/en --config.tokenizer.path=t5_spiece.model
Budget:   1,000,000 steps x 2,048 x 512 ~ 1T tokens (released models, Section 3.7); the
          paper's baseline is this architecture at 2^19 steps x 128 x 512 ~ 34B tokens.
Slice:    v5p-64, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 44.1 of 95.7 GiB per chip); a v5p-32 peaks at 85.6 GiB (89%).
Expected: python -m fmjax.info reports 222,903,552 parameters; the baseline's fine-tuned GLUE
          average 83.28 (Table 1); the released model's 82.7 (Table 14).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "t5_small")
    c.model.d_model = 768  # Section 3.1.1
    c.model.n_layers = 12  # encoder blocks (Section 3.1.1)
    c.model.n_decoder_layers = 12  # decoder blocks
    c.model.n_heads = 12  # Section 3.1.1
    c.model.d_ff = 3072  # Section 3.1.1
    c.hardware.tpu_slice = "v5p-64"  # smallest slice with room for this run (header: Slice)
    return c
