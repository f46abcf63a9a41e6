"""BERT-large, 340M (Devlin et al. 2019, Section 3: L=24, H=1024, A=16; Appendix A.2;
Google's released uncased checkpoint: vocab 30,522, 512 positions, 2 token types,
intermediate size 4096, LayerNorm eps 1e-12). The recipe is configs/bert_base.py's.

Command:  python -m fmjax.train --config=configs/bert_large.py --workdir=gs://BUCKET/bert_large \
              --config.data.source=wikipedia/20230601.en \
              --config.tokenizer.path=bert_30521.model --config.mesh.fsdp=8
          (phase 1 at 128 tokens as in configs/bert_base.py's header).
Budget:   1,000,000 steps x 256 rows x 512 tokens = 131B tokens (Appendix A.2), 4 days on 64
          TPU chips in the paper.
Slice:    v5p-16, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 12.0 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 335,141,888 parameters (encoder + pooler; MLM head
          apart); fine-tuned GLUE test average 82.1 and MNLI-m 86.7 (Table 1).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "bert_base")
    c.model.d_model = 1024  # H
    c.model.n_layers = 24  # L
    c.model.n_heads = 16  # A
    c.model.d_ff = 4096  # 4H
    c.model.remat_policy = "dots_no_batch"  # 24 layers at 512 tokens: recompute the rest
    c.hardware.tpu_slice = "v5p-16"  # smallest slice with room for this run (header: Slice)
    return c
