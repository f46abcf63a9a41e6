"""Fine-tune on GLUE SST-2 (binary sentiment of movie-review sentences; Socher et al. 2013).

Source:   TFDS `glue/sst2` (67,349 train / 872 validation sentences; its test split is unlabelled,
          so validation is used). TFDS needs TensorFlow to BUILD it once; build it where
          TensorFlow is installed: `tfds build glue/sst2 --file_format=array_record
          --data_dir=~/.cache/fmjax/tfds` (or copy the built directory here).
Command:  python -m fmjax.finetune --config=configs/finetune/sst2.py --workdir=runs/sst2 \
              --config.init_from=PRETRAIN_WORKDIR
Metrics:  accuracy, macro F1, ROC AUC (binary), majority baseline 0.509 on validation.
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.task.name = "classification"
    c.task.select_metric = "eval_accuracy"  # GLUE reports accuracy for SST-2
    c.data.source = "glue/sst2"
    c.data.text_field = "sentence"
    c.train.steps = 2000
    c.train.global_batch_size = 32
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.optim.learning_rate = 2e-5  # BERT-style fine-tuning rate
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 0.01
    return c
