"""A tiny BERT pretrained with masked-language modelling on the embedded corpus: the
encoder family and the mlm objective end to end, in about a minute on a 2-core CPU.

Source:   fmjax's smoke configuration for the encoder family (configs/bert_base.py has the
          paper's architecture); data = this interpreter's stdlib *.py files.
Command:  python -m fmjax.train --config=configs/bert_tiny.py --workdir=runs/bert_tiny
          python -m fmjax.finetune --config=configs/finetune/default.py \
              --workdir=runs/bert_tiny_cls --config.init_from=runs/bert_tiny
Budget:   150 steps x 16 rows x 128 tokens = 0.3M tokens.
Expected: MLM validation loss falls from ~6.3 (ln 512) to below 5 (checked, at a shorter
          budget, in tests/e2e/test_families_cli.py).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "prefix_lm_tiny")  # same size, data and schedule
    c.objective = "mlm"  # fmjax/objectives/mlm.py: 15% of tokens, 80/10/10
    c.model.family = "bert"  # fmjax/models/bert.py: post-LN encoder, pooler, tied MLM head
    c.model.vocab_size = 513  # 512 SentencePiece pieces + [MASK]
    c.tokenizer.extra_ids = 1  # [MASK] = vocab_size - 1
    c.model.max_positions = 128  # learned position table = seq_len
    c.model.norm_eps = 1e-12  # BERT's LayerNorm epsilon
    c.optim.learning_rate = 2e-3  # post-LN trains less stably at 3e-3
    return c
