"""Mixtral 8x7B (Jiang et al. 2024, "Mixtral of Experts", Table 1, and the released
mistralai/Mixtral-8x7B-v0.1 config.json): 32 layers, d_model 4096, 32 query / 8 key-value heads
of 128, every MLP a sparse mixture of 8 SwiGLU experts of width 14,336 with top-2 routing
(weights: softmax over the 8, top 2 renormalised), vocab 32,000, untied output, RoPE theta 1e6,
RMSNorm eps 1e-5. The paper publishes no training recipe (data, batch, schedule): the
optimizer and batch below are Llama 2's (configs/llama2_7b.py), a starting point.

Command:  python -m fmjax.train --config=configs/mixtral_8x7b.py --workdir=gs://BUCKET/mixtral \
              --config.data.source=c4/en --config.tokenizer.path=mistral_tokenizer.model \
              --config.mesh.fsdp=-1 --config.mesh.data=1 --config.mesh.expert=8
Budget:   not published; 1,000 steps of 4M tokens ~ 4B tokens as a smoke run. The state is
          46.7B x 12 bytes (float32 params + Adam moments) = 560 GB: shard it with fsdp, and
          the experts 8 ways over mesh.expert (one expert per device of an expert group).
Slice:    v5p-512, the smallest on which this command peaks below 85% of HBM (python -m
          fmjax.preflight --fast: 47.7 of 95.7 GiB per chip, mesh fsdp 32 x expert 8, the
          experts in megablox, compiled in 32 s on a 2-core host); a v5p-256 peaks at 92.1 GiB
          (96%).
Expected: python -m fmjax.info reports 46,702,792,704 parameters, 12,879,925,248 active per
          token (two of eight experts: 32 x 6 x 3 x 4096 x 14,336 expert weights are not
          used by a token; MFU counts the active ones, fmjax/models/flops.py).
"""
from fmjax.config import sibling_config


def get_config():
    c = sibling_config(__file__, "llama2_7b")
    c.model.family = "mixtral"  # Llama blocks with sparse MLPs (fmjax/models/mixtral.py)
    c.model.vocab_size = 32000  # Mistral SentencePiece vocabulary
    c.model.seq_len = 4096  # trained with a 32k context (paper Section 2): raise it with attention_impl=splash
    c.model.n_kv_heads = 8  # grouped-query attention (config.json num_key_value_heads)
    c.model.d_ff = 14336  # each expert's hidden width (intermediate_size)
    c.model.rope_theta = 1e6  # config.json rope_theta
    c.model.norm_eps = 1e-5  # rms_norm_eps
    c.model.moe.num_experts = 8  # num_local_experts
    c.model.moe.top_k = 2  # num_experts_per_tok
    c.model.moe.interval = 1  # every MLP is sparse
    c.model.moe.renormalize = True  # top-2 softmax weights renormalised (HF MixtralTopKRouter)
    c.model.moe.load_balance_loss = 0.02  # HF router_aux_loss_coef in the release config
    c.model.moe.router_z_loss = 0.0  # not used by Mixtral
    c.model.remat_policy = "full"
    c.hardware.tpu_slice = "v5p-512"  # smallest slice with room for this run (header: Slice)
    return c
