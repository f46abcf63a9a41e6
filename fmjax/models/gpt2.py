"""GPT-2 (Radford et al. 2019): learned positions, pre-LayerNorm with biases, GELU MLP (4D),
tied input/output embeddings, output projections initialised with std / sqrt(2L)."""
from fmjax import models
from fmjax.models.decoder import Decoder, DecoderSpec

SPEC = DecoderSpec(norm="layernorm", mlp_activation="gelu", use_bias=True,
                   learned_positions=True, scaled_out_init=True)

models.register(models.Family(
    name="gpt2",
    make_module=lambda cfg: Decoder(cfg, SPEC),
    default_d_ff=lambda d: 4 * d,
    default_tie_embeddings=True,
    position_params=lambda cfg: cfg.max_positions * cfg.d_model,
))
