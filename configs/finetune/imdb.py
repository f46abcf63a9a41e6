"""Fine-tune on IMDB movie reviews (binary sentiment; Maas et al. 2011).

Source:   TFDS `imdb_reviews` (25,000 train / 25,000 test reviews; no validation split, so
          test is used). Build it once where TensorFlow is installed:
          `tfds build imdb_reviews --file_format=array_record --data_dir=~/.cache/fmjax/tfds`.
Command:  python -m fmjax.finetune --config=configs/finetune/imdb.py --workdir=runs/imdb \
              --config.init_from=PRETRAIN_WORKDIR
Metrics:  accuracy, macro F1, ROC AUC; reviews are long, so the first seq_len tokens are kept.
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.task.name = "classification"
    c.task.select_metric = "eval_accuracy"
    c.data.source = "imdb_reviews"
    c.data.text_field = "text"
    c.train.steps = 1500
    c.train.global_batch_size = 32
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 150
    c.optim.weight_decay = 0.01
    return c
