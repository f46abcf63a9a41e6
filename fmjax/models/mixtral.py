"""Mixtral (Jiang et al. 2024, "Mixtral of Experts"): Llama's blocks (RoPE, RMSNorm, grouped-query
attention, no biases, untied head) whose MLPs are mixtures of SwiGLU experts, set by
config.model.moe (num_experts 8, top_k 2, interval 1 in configs/mixtral_8x7b.py; the layer:
fmjax/nn/moe.py). Its own family so that Hugging Face's Mixtral checkpoints map onto it
(fmjax/hf/mixtral.py); the module is Llama's decoder."""
from fmjax import models
from fmjax.models.decoder import Decoder
from fmjax.models.llama import SPEC, default_d_ff

models.register(models.Family(
    name="mixtral",
    make_module=lambda cfg: Decoder(cfg, SPEC),
    default_d_ff=default_d_ff,
    default_tie_embeddings=False,
))
