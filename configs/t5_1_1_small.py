"""T5.1.1-Small, 77M (google-research/text-to-text-transfer-transformer,
released_checkpoints.md "T5.1.1" and the released gin / HF config.json: 8 + 8 layers, d_model
512, 6 heads, d_kv 64, d_ff 1024, GeGLU MLP, untied output layer, no dropout in pre-training,
C4 only; vocab 32,128 as T5 v1.0). Recipe otherwise T5's (configs/t5_small.py, Raffel et al.
2020 Section 3.7).

Command:  python -m fmjax.train --config=configs/t5_1_1_small.py \
              --workdir=gs://BUCKET/t5_1_1_small --config.data.source=c4/en \
              --config.tokenizer.path=t5_spiece.model
          (fine-tuning: re-enable dropout, --config.model.dropout=0.1, as the release notes say).
Budget:   1,000,000 steps x 2,048 rows x 512 tokens ~ 1T tokens of C4 (T5's recipe).
Slice:    v5p-16, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 73.3 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 76,961,152 parameters (shared input embedding + separate
          lm_head, 32 x 6 relative buckets per stack, no biases).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "t5_small")
    c.model.family = "t5_1_1"  # GeGLU, untied lm_head
    c.model.d_model = 512  # released config
    c.model.n_layers = 8  # encoder blocks
    c.model.n_decoder_layers = 8  # decoder blocks
    c.model.n_heads = 6  # released config
    c.model.head_dim = 64  # d_kv
    c.model.d_ff = 1024  # released config
    c.model.dropout = 0.0  # "Dropout was turned off in pre-training" (release notes)
    c.hardware.tpu_slice = "v5p-16"  # smallest slice with room for this run (header: Slice)
    return c
