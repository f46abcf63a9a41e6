"""TPU kernels (Pallas), each registered at the seam (fmjax/kernels/__init__.py)."""
from fmjax.kernels.tpu import megablox, splash_attention  # noqa: F401
