"""TPU kernels (Pallas), each registered at the seam (fmjax/kernels/__init__.py)."""
from fmjax.kernels.tpu import splash_attention  # noqa: F401
