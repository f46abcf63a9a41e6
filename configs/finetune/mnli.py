"""Fine-tune on GLUE MNLI (premise / hypothesis -> entailment, neutral, contradiction;
Williams et al. 2018).

Source:   TFDS `glue/mnli` (392,702 train pairs; 9,815 validation_matched and 9,832
          validation_mismatched; the test splits are unlabelled). Each row is
          [bos] premise [eos] hypothesis (token types 0 / 1, fmjax/data/classification.py).
          Build it once where TensorFlow is installed: `tfds build glue/mnli
          --file_format=array_record --data_dir=~/.cache/fmjax/tfds`.
Command:  python -m fmjax.finetune --config=configs/finetune/mnli.py --workdir=runs/mnli \
              --config.init_from=PRETRAIN_WORKDIR
          (the mismatched genres: --config.data.validation_split=validation_mismatched)
Budget:   6,000 steps x 32 pairs (about 0.5 epoch) x seq_len tokens; BERT fine-tuned 3 epochs
          at batch 32 (Devlin et al. 2019, sec. 4.1): --config.train.steps=36800 for that.
Expected: the three classes are balanced, so the majority-class baseline is about 0.33;
          BERT-base reaches 84.6 / 83.4 accuracy (matched / mismatched, Devlin et al. 2019,
          Table 1); a small model pretrained on the stdlib corpus stays far below that (it
          has read no English).
"""
from fmjax.config import base_config


def get_config():
    c = base_config()
    c.task.name = "classification"
    c.task.select_metric = "eval_accuracy"  # GLUE reports accuracy for MNLI
    c.data.source = "glue/mnli"
    c.data.text_field = "premise,hypothesis"  # a pair: segments A and B
    c.data.validation_split = "validation_matched"
    c.train.steps = 6000
    c.train.global_batch_size = 32
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.learning_rate = 2e-5  # BERT-style fine-tuning rate
    c.optim.warmup_steps = 600
    c.optim.weight_decay = 0.01
    return c
