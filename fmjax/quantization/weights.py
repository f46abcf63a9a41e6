"""The quantized model's apply: a weight stored as integers is multiplied by its scale inside the
jitted apply, right before the matmul (or the embedding lookup) that reads it. No float copy is
ever a param: params hold `kernel` (int8 or int4, the float kernel's shape and logical axes)
and `kernel_scale` (float32; see integer_params.py for its shape), and the float weight exists only
as a temporary of the compiled program.

`weight(module, name, w, contract_axes)` is the one hook fmjax/nn/layers.py calls, on every
Dense kernel and Embed table: the weight itself when it is a float (every unquantized model,
unchanged), else `dequantize(w, scale)`, plus A @ B when LoRA adapters sit beside it
(NAME_lora_a, NAME_lora_b: QLoRA, fmjax/nn/lora.py). It also tells `record_layouts` which
axes of each weight a matmul contracts, which is how integer_params.py learns where the output
channels are.

Why not qwix's own model interception (qwix.quantize_model + qwix.PtqProvider): measured on
fmjax's tiny gpt2 and llama (tests/helpers.tiny_config), it quantized 0 of the 6 (gpt2) and 8
(llama) Dense kernels, only gpt2's tied embedding. qwix intercepts jax.lax.dot_general /
jnp.einsum on a param it can still recognise; fmjax's Dense casts and reshapes the kernel and
multiplies through a custom-VJP `matmul` whose forward is the `dense_affine` operation of
fmjax/kernels/ (a C++ FFI call on CPU), attention stacks the q/k/v kernels into one GEMM, and
embedding lookups are gathers, none of which qwix sees. So the numerics are qwix's (absmax
calibration, round-to-nearest, QArray, qwix.dequantize) and the placement is this hook.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Sequence

import jax.numpy as jnp

from fmjax.nn import lora

SCALE_SUFFIX = "_scale"  # the param beside a quantized weight that holds its scales


@dataclasses.dataclass(frozen=True)
class Use:
    """One weight as a layer reads it: module path + param name, its shape as the layer sees it
    (inside nn.scan: one layer's), and the axes its matmul contracts."""
    path: tuple[str, ...]
    shape: tuple[int, ...]
    contract_axes: tuple[int, ...]


_USES: contextvars.ContextVar[list | None] = contextvars.ContextVar("fmjax_weight_uses",
                                                                    default=None)


@contextlib.contextmanager
def record_layouts() -> Iterator[list[Use]]:
    """Collects a `Use` for every weight the hook sees while tracing a model (init or apply)."""
    uses: list[Use] = []
    token = _USES.set(uses)
    try:
        yield uses
    finally:
        _USES.reset(token)


def dequantize(q, scale_S):
    """q (int8/int4) times its scales, broadcast over the groups they cover (qwix.dequantize):
    float32 [q.shape]. The reference a quantized model's matmuls use, bit for bit."""
    import qwix  # its import pulls flax.nnx: only models that are quantized pay it
    return qwix.dequantize(qwix.QArray(q, scale_S.astype(jnp.float32), qtype=q.dtype))


def weight(module, name: str, w, contract_axes: Sequence[int]):
    """The float weight a layer computes with: `w` itself, or, for integers, w times the
    sibling param NAME_scale (see the module docstring)."""
    uses = _USES.get()
    if uses is not None:
        uses.append(Use(tuple(module.path) + (name,), tuple(w.shape), tuple(contract_axes)))
    if not jnp.issubdtype(w.dtype, jnp.integer):
        return w
    if not module.has_variable("params", name + SCALE_SUFFIX):
        raise ValueError(f"params {'/'.join(module.path)}/{name} is {w.dtype} without "
                         f"{name}{SCALE_SUFFIX}: a quantized checkpoint loads with "
                         "fmjax.generation.loading.load_run (fmjax/quantization/)")
    w = dequantize(w, module.get_variable("params", name + SCALE_SUFFIX))
    if module.has_variable("params", name + "_" + lora.A_KEY):  # QLoRA: adapters beside it
        w = w + lora.low_rank_delta(module.get_variable("params", name + "_" + lora.A_KEY),
                                    module.get_variable("params", name + "_" + lora.B_KEY))
    return w
