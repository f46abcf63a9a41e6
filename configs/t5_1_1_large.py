"""T5.1.1-Large, 783M (google-research/text-to-text-transfer-transformer,
released_checkpoints.md "T5.1.1" and the released gin / HF config.json: 24 + 24 layers,
d_model 1024, 16 heads, d_kv 64, d_ff 2816, GeGLU, untied output, no pre-training dropout);
the rest as configs/t5_1_1_small.py.

Command:  python -m fmjax.train --config=configs/t5_1_1_large.py \
              --workdir=gs://BUCKET/t5_1_1_large --config.data.source=c4/en \
              --config.tokenizer.path=t5_spiece.model --config.mesh.fsdp=8
Budget:   1,000,000 steps x 2,048 x 512 ~ 1T tokens of C4 (T5's recipe).
Slice:    v5p-32, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 52.2 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 783,150,080 parameters.
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "t5_1_1_small")
    c.model.d_model = 1024  # released config
    c.model.n_layers = 24  # encoder blocks
    c.model.n_decoder_layers = 24  # decoder blocks
    c.model.n_heads = 16  # released config
    c.model.d_ff = 2816  # released config
    c.model.remat_policy = "dots_no_batch"  # 48 blocks: recompute the rest
    c.hardware.tpu_slice = "v5p-32"  # smallest slice with room for this run (header: Slice)
    return c
