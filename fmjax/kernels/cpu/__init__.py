"""fmjax's C++ kernels for XLA:CPU, each registered at the seam (fmjax/kernels/__init__.py) as
an implementation of the operation it speeds up; built on first use (ffi.py)."""
from fmjax.kernels.cpu import adamw, attention, cross_entropy, dense, layer_norm  # noqa: F401
