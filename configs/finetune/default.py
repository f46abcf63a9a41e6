"""Fine-tune: which standard-library package does a function come from? (the README main job's
second stage; needs no download).

Source:   fmjax's embedded downstream task (fmjax/data/stdlib_functions.py): top-level functions
          and methods of six large stdlib packages (asyncio, email, importlib, multiprocessing,
          unittest, xml), one example each; train/validation split by FILE, so no file's
          functions are on both sides. 20% of files held out (5% would leave classes without
          validation examples).
Command:  python -m fmjax.finetune --config=configs/finetune/default.py --workdir=runs/finetune \
              --config.init_from=runs/default
Model:    the pretrained run's own (shape and tokenizer come from its checkpoint) + a linear head
          on the last token; full fine-tuning (set --config.lora.rank=8 for adapters only).
Budget:   150 steps x 16 functions x 256 tokens; about 2 minutes on a 2-core CPU.
Expected: see the README's main-job table (accuracy and macro F1 well above the majority-class
          baseline, which is low here because the held-out files are lumpy by package).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.task.name = "classification"
    c.task.select_metric = "eval_f1"  # macro F1: the validation split is far from balanced
    c.data.source = "stdlib_functions"
    c.data.validation_percent = 20
    c.train.steps = 150
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.train.log_every = 10
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 15
    c.optim.weight_decay = 0.01
    return c
