"""Model FLOPs per token, fmjax's one MFU convention (training logs, bench, README):

  FLOPs per token = 6 N + 12 L d T
  N = parameters excluding position embeddings, L layers, d = n_heads x head_dim, T = seq_len.
  Mixture of experts: N counts the ACTIVE parameters, those one token passes through: every
  parameter but the (E - K) / E of the routed experts it is not sent to (router and shared
  experts in full; tokens dropped by a capacity still count; fmjax/nn/moe.py active_params).
  (6N: forward + backward matmuls; 12 L d T: attention scores and weighted values, fwd + bwd,
  counting the full T x T square, PaLM appendix B.) Remat recomputation is not counted.
  Encoder-decoder families (T5) count each stack over the tokens that pass through it
  (`encoder_decoder_flops_per_row`); throughput there counts the raw tokens a row consumed.
The denominator of MFU, the devices' peak FLOP/s, is fmjax/training/peak_flops.py.
"""
from __future__ import annotations


def flops_per_token(model_config, num_params: int, position_params: int) -> float:
    c = model_config
    n = num_params - position_params
    return 6.0 * n + 12.0 * c.n_layers * c.n_heads * c.head_dim * c.seq_len


def encoder_decoder_flops_per_row(cfg, *, mlp_matrices: int, encoder_len: int,
                                  decoder_len: int) -> float:
    """Model FLOPs of one (encoder row, decoder row) pair, the same convention per stack:
    6 x (weights each token passes through) + 12 L d x (attended length), where encoder tokens
    pass the encoder blocks, decoder tokens the decoder blocks (self + cross attention) and the
    output layer (V x D), and cross-attention attends over the S encoder positions."""
    d, h, v = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.vocab_size
    s, t = encoder_len, decoder_len
    encoder = cfg.n_layers * 4 * d * h + mlp_weights(cfg, mlp_matrices, cfg.n_layers)
    decoder = cfg.n_decoder_layers * 8 * d * h + mlp_weights(cfg, mlp_matrices,
                                                             cfg.n_decoder_layers)
    dense = 6.0 * (encoder * s + (decoder + v * d) * t)
    attention = 12.0 * h * (cfg.n_layers * s * s + cfg.n_decoder_layers * (t * t + t * s))
    return dense + attention


def mlp_weights(cfg, mlp_matrices: int, n_blocks: int) -> int:
    """MLP weights a token passes through in `n_blocks` blocks: d_model x d_ff per matrix;
    with a mixture of experts, in each group of moe.interval blocks the last one's router and
    its top_k routed + shared experts (active parameters, as the module docstring counts)."""
    d, moe = cfg.d_model, cfg.moe
    dense = mlp_matrices * d * cfg.d_ff
    if not moe.enabled:
        return n_blocks * dense
    sparse = (moe.top_k + moe.num_shared_experts) * mlp_matrices * d * moe.d_ff
    return n_blocks // moe.interval * ((moe.interval - 1) * dense + sparse + d * moe.num_experts)
