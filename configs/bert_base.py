"""BERT-base, 110M (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers
for Language Understanding", Section 3: L=12, H=768, A=12; Appendix A.2: pre-training
procedure; Google's released uncased checkpoint: WordPiece vocab 30,522, 512 positions, 2 token
types, intermediate size 3072, LayerNorm eps 1e-12).

Command:  python -m fmjax.train --config=configs/bert_base.py --workdir=gs://BUCKET/bert_base \
              --config.data.source=wikipedia/20230601.en \
              --config.tokenizer.path=bert_30521.model
          (a SentencePiece model of 30,521 pieces; [MASK] is the one extra id, 30,521).
          The paper runs 90% of the steps at 128 tokens, then 10% at 512: run phase 1 with
          --config.model.seq_len=128 --config.train.steps=900000, then resume with the values
          here (max_positions stays 512, so the parameters are the same).
Budget:   1,000,000 steps x 256 rows x 512 tokens = 131B tokens (~40 epochs of the 3.3B-word
          BooksCorpus + Wikipedia; Appendix A.2), 4 days on 16 TPU chips in the paper.
Slice:    v5p-8, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 38.2 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 109,482,240 parameters (encoder + pooler; the MLM head's
          transform, LayerNorm and output bias are listed apart); fine-tuned GLUE test average
          79.6 and MNLI-m 84.6 (Table 1).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.objective = "mlm"  # masked LM, 15% of tokens, 80/10/10 (Section 3.1; c.mlm defaults)
    c.model.family = "bert"
    c.model.vocab_size = 30522  # uncased WordPiece vocabulary of the release
    c.tokenizer.extra_ids = 1  # [MASK] = vocab_size - 1, outside the SentencePiece model
    c.model.seq_len = 512  # phase 2 row length (Appendix A.2)
    c.model.max_positions = 512  # learned position table
    c.model.type_vocab_size = 2  # sentence A / B
    c.model.d_model = 768  # H
    c.model.n_layers = 12  # L
    c.model.n_heads = 12  # A
    c.model.d_ff = 3072  # 4H
    c.model.norm_eps = 1e-12  # release config layer_norm_eps
    c.model.dropout = 0.1  # all layers, attention included (Appendix A.2)
    c.model.dtype = "bfloat16"
    c.train.steps = 1_000_000  # Appendix A.2
    c.train.global_batch_size = 256  # 256 sequences (128,000 tokens at 512)
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 10_000
    c.optim.learning_rate = 1e-4  # Adam, Appendix A.2
    c.optim.b1, c.optim.b2 = 0.9, 0.999  # Appendix A.2
    c.optim.eps = 1e-6  # the release's AdamWeightDecayOptimizer
    c.optim.weight_decay = 0.01  # L2 weight decay 0.01 (decoupled, as in the release)
    c.optim.warmup_steps = 10_000  # Appendix A.2
    c.optim.schedule = "linear"  # linear decay of the learning rate ...
    c.optim.min_lr_ratio = 0.0  # ... to zero
    c.optim.clip_norm = 1.0  # the release clips the global norm at 1.0
    c.hardware.tpu_slice = "v5p-8"  # smallest slice with room for this run (header: Slice)
    return c
