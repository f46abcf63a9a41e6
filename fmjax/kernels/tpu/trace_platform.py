"""Which code a Pallas TPU kernel should emit: the Mosaic kernel when the trace targets TPU, else
Pallas' interpret mode (slow; how the tests run the kernels on CPU)."""
import jax


def compiling_for_tpu() -> bool:
    """Whether this trace targets TPU: the devices of the mesh in scope (pre-flight compiles
    for TPU devices from a CPU host), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    if device is not None:
        return device.platform == "tpu"
    return jax.default_backend() == "tpu"
