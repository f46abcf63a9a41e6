"""T5-Large v1.0, 770M (Raffel et al. 2020, JMLR, Section 3.7 "Model sizes": 24 + 24 layers,
d_model 1024, 16 heads, d_kv 64, d_ff 4096; vocab 32,128 and the recipe of
configs/t5_small.py).

Command:  python -m fmjax.train --config=configs/t5_large.py --workdir=gs://BUCKET/t5_large \
              --config.data.source=c4/en --config.tokenizer.path=t5_spiece.model \
              --config.mesh.fsdp=8
Budget:   1,000,000 steps x 2,048 x 512 ~ 1T tokens (released models, Section 3.7).
Slice:    v5p-32, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 45.5 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 737,668,096 parameters; fine-tuned GLUE average 86.4
          (Table 14).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "t5_small")
    c.model.d_model = 1024  # Section 3.7
    c.model.n_layers = 24  # encoder blocks (Section 3.7)
    c.model.n_decoder_layers = 24  # decoder blocks
    c.model.n_heads = 16  # Section 3.7
    c.model.d_ff = 4096  # Section 3.7
    c.model.remat_policy = "dots_no_batch"  # 48 blocks: recompute the rest
    c.hardware.tpu_slice = "v5p-32"  # smallest slice with room for this run (header: Slice)
    return c
