"""Llama (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU MLP, grouped-query attention (n_kv_heads),
no biases, untied output head."""
from fmjax import models
from fmjax.models.decoder import Decoder, DecoderSpec

SPEC = DecoderSpec(norm="rmsnorm", mlp_activation="swiglu", use_bias=False,
                   learned_positions=False, scaled_out_init=False)


def default_d_ff(d_model: int, multiple_of: int = 256) -> int:
    """Llama's MLP width: 2/3 of 4D, rounded up to a multiple of 256 (11008 for D = 4096)."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * -(-hidden // multiple_of)


models.register(models.Family(
    name="llama",
    make_module=lambda cfg: Decoder(cfg, SPEC),
    default_d_ff=default_d_ff,
    default_tie_embeddings=False,
))
