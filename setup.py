"""fmjax: pretraining and fine-tuning foundation models with JAX/Flax."""
from setuptools import find_packages, setup

# Ranges tested together on Python 3.11 (CPU) in Nov 2026; upper bounds leave room for the
# newer jax/flax/optax/orbax that GPU and TPU images ship (jax 0.11.x on Python 3.12).
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.12",
    "flax>=0.12.0,<0.14",
    "optax>=0.2.5,<0.4",
    "orbax-checkpoint>=0.12.0,<0.14",
    "tensorflow-datasets>=4.9.8,<5",
    "importlib_resources>=6",  # imported by tensorflow-datasets but not declared by it
    "array_record>=0.7,<0.10",
    "grain>=0.2.12,<0.4",
    "sentencepiece>=0.2.0,<0.3",
    "tokenizers>=0.20,<1",  # imported models' tokenizer.json (fmjax/data/hf_tokenizer.py)
    "ml-collections>=1.0,<2",
    "absl-py>=2.1",
    "numpy>=1.26",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "pyarrow>=14",  # reads the benchmark data of fmjax/evals/olmo_data.py
    "qwix>=0.1.8,<0.3",  # quantization numerics: QArray, absmax scales (fmjax/quantization/)
    "flatbuffers>=23.5",  # jax.export's serialization (fmjax.export --format=stablehlo)
]

setup(
    name="fmjax",
    version="0.1.0",
    description="JAX/Flax pretraining and fine-tuning of foundation models",
    packages=find_packages(include=["fmjax", "fmjax.*"]),
    package_data={"fmjax.kernels.cpu": ["*.cc", "*.h"]},  # C++ kernels, compiled on first use (ffi.py)
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5",
                 # notebooks/ are executed by tests/e2e/test_notebooks.py
                 "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29", "matplotlib>=3.8",
                 # Hugging Face parity tests (tests/test_convert.py; fmjax.convert itself reads
                 # and writes safetensors without them). torch is pinned to the release whose
                 # CPU-only wheel is at hand: any other spec pulls the CUDA build (several GB
                 # of nvidia-* packages) from PyPI.
                 "transformers>=5.0,<6", "torch==2.13.0", "safetensors>=0.4.3,<1",
                 # the reference of the evaluation parity test and benchmark
                 # (tests/evals/test_lm_eval_parity.py, benchmarks/lm_eval_speed.py)
                 "lm-eval[hf]>=0.4.13,<0.5",
                 # fmjax.preflight compiles for TPU topologies on any Linux host
                 # (tests/test_preflight.py); the libtpu release jax[tpu]==0.10.2 requires.
                 # With another jax, take its own: pip install 'jax[tpu]==<your jax>'.
                 'libtpu==0.0.42.*; sys_platform == "linux" and platform_machine == "x86_64"'],
        "gpu": ["jax[cuda12]>=0.10.0,<0.12"],
        "tpu": ["jax[tpu]>=0.10.0,<0.12"],
    },
)
