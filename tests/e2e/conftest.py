"""A trained workdir shared by the end-to-end tests (one 60-step CLI run per session)."""
import pytest

from tests.e2e.test_train_cli import TINY, cli


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp("full"))
    out = cli("fmjax.train", *TINY, f"--workdir={workdir}", f"--config.data.tfds_data_dir={data_dir}",
              "--config.train.steps=60")
    return workdir, out
