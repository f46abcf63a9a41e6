"""T5 v1.1 <-> transformers' T5ForConditionalGeneration with feed_forward_proj "gated-gelu"
(google/t5-v1_1-*, and typically an untied, unscaled lm_head): fmjax/hf/t5.py's converter with
the gated MLP (DenseReluDense.wi_0 = mlp/gate, wi_1 = mlp/up, wo = mlp/down)."""
from fmjax.hf import mapping, t5

mapping.register(t5.t5_converter("t5_1_1", "gated-gelu", sibling="t5"))
