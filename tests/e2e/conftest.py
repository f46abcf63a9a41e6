"""A trained workdir shared by the end-to-end tests (one 60-step CLI run per session)."""
import pytest

from tests.e2e.test_train_cli import TINY, cli

FINETUNE = ["--config=configs/finetune/default.py", "--config.train.global_batch_size=8",
            "--config.train.log_every=5", "--config.train.eval_every=10",
            "--config.train.checkpoint_every=10", "--config.data.max_examples=240"]


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("full"))
    out = cli("fmjax.train", *TINY, f"--workdir={workdir}", f"--config.data.tfds_data_dir={data_dir}",
              "--config.train.steps=60")
    return workdir, out


@pytest.fixture(scope="session")
def finetune_run(full_run, tmp_path_factory, data_dir):
    """The embedded classification task fine-tuned 20 steps from `full_run`."""
    pretrained, _ = full_run
    workdir = str(tmp_path_factory.mktemp("ft_cls"))
    out = cli("fmjax.finetune", *FINETUNE, f"--workdir={workdir}",
              f"--config.init_from={pretrained}", f"--config.data.tfds_data_dir={data_dir}",
              "--config.train.steps=20")
    return pretrained, workdir, out
