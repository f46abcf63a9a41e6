"""T5-Small v1.0, 60M (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", JMLR; Section 3.7 "Model sizes": 6 + 6 layers, d_model 512,
8 heads, d_kv 64, d_ff 2048; Section 3.1.2 for the pre-training objective and schedule;
Google's released checkpoint: vocab 32,128 = 32,000 SentencePiece pieces (Section 2.2) + 100
sentinels + 28 padding ids).

Command:  python -m fmjax.train --config=configs/t5_small.py --workdir=gs://BUCKET/t5_small \
              --config.data.source=c4/en --config.tokenizer.path=t5_spiece.model
          (a 32,000-piece SentencePiece model; sentinel k is id 32,127 - k).
Budget:   the released models: 1,000,000 steps x 2,048 rows x 512 tokens ~ 1T tokens (Section
          3.7); the paper's baseline: 2^19 = 524,288 steps x 128 x 512 ~ 34B tokens
          (--config.train.global_batch_size=128 --config.train.steps=524288).
Slice:    v5p-16, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight: 57.3 of 95.7 GiB per chip).
Expected: python -m fmjax.info reports 60,506,624 parameters (one embedding shared by encoder,
          decoder and output, relative position buckets 32 x 8 per stack, no biases);
          fine-tuned GLUE average 77.4 (Table 14).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.objective = "span_corruption"  # 15% noise, mean span 3 (Section 3.3.4; the defaults)
    c.model.family = "t5"
    c.model.vocab_size = 32128  # released vocabulary
    c.tokenizer.extra_ids = 128  # 100 sentinels + 28 padding ids after the 32,000 pieces
    c.span_corruption.num_sentinels = 100  # HF <extra_id_k> = 32099 - k
    c.model.seq_len = 512  # encoder input tokens per packed row (Section 3.1.2)
    c.model.d_model = 512  # Section 3.7
    c.model.n_layers = 6  # encoder blocks (Section 3.7)
    c.model.n_decoder_layers = 6  # decoder blocks
    c.model.n_heads = 8  # Section 3.7
    c.model.head_dim = 64  # d_kv
    c.model.d_ff = 2048  # Section 3.7
    c.model.norm_eps = 1e-6  # release config layer_norm_epsilon
    c.model.relative_buckets = 32  # Section 2.1
    c.model.relative_max_distance = 128  # Section 2.1
    c.model.dropout = 0.1  # Section 3.1.2 (every dropout, attention and MLP hidden included)
    c.model.dtype = "bfloat16"
    c.train.steps = 1_000_000  # released models (Section 3.7)
    c.train.global_batch_size = 2048  # Section 3.7: 2^11 sequences of 512 tokens
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 10_000
    c.optim.name = "adafactor"  # Section 3.1.2
    c.optim.schedule = "rsqrt"  # 1/sqrt(max(n, k)) with k = 10^4 (Section 3.1.2) ...
    c.optim.learning_rate = 0.01  # ... = 0.01 at step 10^4; fmjax warms up linearly to it
    c.optim.warmup_steps = 10_000  # k
    c.optim.weight_decay = 0.0  # none in the paper
    c.optim.clip_norm = 0.0  # Adafactor clips its updates itself
    c.hardware.tpu_slice = "v5p-16"  # smallest slice with room for this run (header: Slice)
    return c
