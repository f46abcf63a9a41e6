"""Post-training weight quantization (`python -m fmjax.quantize`): int8 per output channel and
int4 in groups along the contraction axis, both symmetric.

  schemes.py          the schemes by name (int8, int4) and the group layout of a weight
  weights.py          the apply: integer weights times their scales inside the jitted model
                      (the hook of fmjax/nn/layers.py's Dense and Embed), and the weight layouts
  integer_params.py   float params -> integer params + scales, and their abstract tree/shardings
  checkpoint_io.py    the quantized checkpoint (orbax, an export's layout) written and loaded
  qlora.py            fine-tuning LoRA adapters over a quantized checkpoint's frozen integers
  guard.py            the config marker, and the refusals of tools that cannot use it

The numerics (absmax calibration, rounding, the QArray of integers + scale) are qwix's
(`qwix.quantize`, `qwix.dequantize`); why not qwix's model interception is in weights.py.
"""
