"""T5 v1.1 (google-research/text-to-text-transfer-transformer, released_checkpoints.md "T5.1.1"):
T5 v1.0's network (models/t5.py) with a gated-GELU MLP (gelu_new gate wi_0 x linear wi_1, then
wo), an untied lm_head (no d_model**-0.5 scaling), and no dropout in pretraining (the
config.model.dropout default 0; re-enable it for fine-tuning). Same param tree as t5 with
mlp/{gate, up, down} and lm_head/kernel."""
import functools

from fmjax import models
from fmjax.models.llama import default_d_ff
from fmjax.models.t5 import T5, T5Spec, row_flops

SPEC = T5Spec(mlp_activation="geglu")

models.register(models.Family(
    name="t5_1_1",
    make_module=lambda cfg: T5(cfg, SPEC),
    default_d_ff=default_d_ff,  # 8D/3 rounded up to 256: the released base (2048), large (2816)
    default_tie_embeddings=False,
    kind="encoder_decoder",
    pretrain_objective="span_corruption",
    default_init_std=1.0,  # multiplier of T5's fan-in init stds (HF initializer_factor)
    row_flops=functools.partial(row_flops, SPEC),
))
