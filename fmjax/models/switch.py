"""Switch Transformer (Fedus et al. 2022, "Switch Transformers", JMLR): T5 v1.0's network
(models/t5.py) whose every interval-th MLP is a mixture of ReLU experts with top-1 routing, set
by config.model.moe (configs/switch_base_8.py: 8 experts, every other MLP, the chosen expert's
output scaled by its router probability). Its own family so that Hugging Face's
SwitchTransformers checkpoints map onto it (fmjax/hf/switch.py); otherwise T5's family, module
and FLOP count."""
import dataclasses

from fmjax import models

models.register(dataclasses.replace(models.get_family("t5"), name="switch"))
