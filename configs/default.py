"""The embedded default: a small GPT-2-style model pretrained on the Python standard library's
own source, the README's main job.

Source:   fmjax's own smoke configuration (no paper); data = this interpreter's stdlib *.py files.
Command:  python -m fmjax.train --config=configs/default.py --workdir=runs/default
Budget:   300 steps x 16 rows x 256 tokens = 1.2M tokens; a few minutes on a 2-core CPU.
Expected: validation loss falls from ~8.3 (ln 4096) to about 3 (perplexity ~20) and the greedy
          sample looks like Python.
"""
from fmjax.config import base_config


def get_config():
    c = base_config()  # every default is documented in fmjax/config.py
    return c
