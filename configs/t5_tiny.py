"""A tiny T5 (v1.0) pretrained with span corruption on the embedded corpus: the
encoder-decoder family and the span_corruption objective end to end, in about a minute on a
2-core CPU.

Source:   fmjax's smoke configuration for the encoder-decoder family (configs/t5_small.py has
          the paper's architecture); data = this interpreter's stdlib *.py files.
Command:  python -m fmjax.train --config=configs/t5_tiny.py --workdir=runs/t5_tiny
          python -m fmjax.finetune --config=configs/finetune/default.py \
              --workdir=runs/t5_tiny_cls --config.init_from=runs/t5_tiny
Budget:   150 steps x 16 rows x 142 raw tokens (encoder input 128, decoder 30) = 0.34M tokens.
Expected: validation loss on the noise spans falls from ~6.3 (ln 528) to below 5 (checked,
          at a shorter budget, in tests/e2e/test_families_cli.py).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "prefix_lm_tiny")  # same size, data and schedule
    c.objective = "span_corruption"  # fmjax/objectives/span_corruption.py: 15% noise, spans of 3
    c.model.family = "t5"  # fmjax/models/t5.py: v1.0, relative position buckets, ReLU MLP
    c.model.vocab_size = 528  # 512 SentencePiece pieces + 16 sentinels
    c.tokenizer.extra_ids = 16  # sentinels vocab_size - 1 - k (a 128-token row has 6 spans)
    c.model.norm_eps = 1e-6  # T5's RMS-norm epsilon
    return c
