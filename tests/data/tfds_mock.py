"""TFDS catalog datasets without downloads: `tfds.testing.mock_data` over real split metadata.

tensorflow-datasets 4.9.10's `mock_data` patches `DatasetBuilder.as_data_source` (which
`tfds.data_source` also calls) and makes `download_and_prepare` a no-op, so fmjax's real code
path runs: `tfds.builder(name, data_dir=..., file_format='array_record')` -> `info.splits` ->
`builder.as_data_source(split)`. Two things are set up here:

* Split metadata. The wheel ships no `dataset_info.json` files, so the default policy falls back
  to `MockPolicy.USE_CODE`, where `info.splits` is EMPTY and no split choice (lm1b has no
  validation split, mnli's are validation_matched / validation_mismatched) could be tested.
  `write_metadata` writes each builder's own `DatasetInfo` (real features, the real split names)
  with `MockPolicy.USE_FILES` pointing at it.
* Records. By default the mock serves random examples generated from the builder's real
  features (random strings of ' abcdefghij' for every Text feature), which is what checks that
  fmjax reads the right feature. `records=` serves given examples instead (the
  `as_data_source_fn` hook), for real-looking text: wiki40b markup, one 1 MB document.
"""
import contextlib

import tensorflow_datasets as tfds

from fmjax.data import tfds_builders
from fmjax.data import sp_tokenizer as tokenizer_lib

# The real split names of the datasets the tests mock (TFDS 4.9.10 builders).
SPLITS = {
    "c4/en": ("train", "validation"),
    "lm1b": ("train", "test"),
    "wiki40b/en": ("train", "validation", "test"),
    "pg19": ("train", "validation", "test"),
    "tiny_shakespeare": ("train", "validation", "test"),
    "ag_news_subset": ("train", "test"),
    "glue/mnli": ("train", "validation_matched", "validation_mismatched", "test_matched",
                  "test_mismatched"),
    # eval tasks' TFDS copies (fmjax/evals/tfds_rows.py)
    "ai2_arc/ARC-Easy": ("train", "validation", "test"),
    "piqa": ("train", "validation"),
    "natural_questions_open": ("train", "validation"),
}


def write_metadata(root, names=tuple(SPLITS), num_examples: int = 1) -> str:
    """`root/<name>/<version>/dataset_info.json` (+ features.json) for each dataset."""
    tfds_builders.import_tfds_legacy_builders()  # c4, wiki40b and glue are legacy builders
    for name in names:
        builder = tfds.builder(name, data_dir=str(root), file_format="array_record")
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix="array_record")
        builder.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0,
                                filename_template=template.replace(split=split))
            for split in SPLITS[name]]))
        builder.data_path.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_path)
    return str(root)


def dataset_name(builder) -> str:
    """'wiki40b/en/1.3.0' -> 'wiki40b/en'; 'lm1b/1.1.0' -> 'lm1b'."""
    return builder.info.full_name.rsplit("/", 1)[0]


@contextlib.contextmanager
def mock_catalog(metadata_dir: str, *, num_examples: int = 16, records=None):
    """TFDS mocked over `metadata_dir`; `records[(name, split)]` (a list of example dicts),
    when given, is what `as_data_source` serves for that dataset and split."""
    def serve(builder, split, **kwargs):
        return records[(dataset_name(builder), split)]

    with tfds.testing.mock_data(num_examples=num_examples,
                                policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=metadata_dir,
                                as_data_source_fn=serve if records is not None else None):
        yield


WORDS = ("the king and queen of the realm said that it was good to see a play in the "
         "evening but not all of them came abcdefghij hij fed cab bad").split()


def tiny_tokenizer(path, vocab_size: int = 384) -> tokenizer_lib.Tokenizer:
    """A BPE model trained in well under a second on sentences of WORDS (plus every
    character of the mock's random strings), enough to round-trip any of the test texts."""
    sentences = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12)) + ".\n"
                 for i in range(400)]
    return tokenizer_lib.Tokenizer(tokenizer_lib.train_sentencepiece(
        sentences, vocab_size=vocab_size, output_path=str(path)))


SEQ_LEN = 32  # row length of the tiny pipeline configs below


def mock_config(*, eval_batches: int, **data):
    """A tiny pipeline config reading through the mock (4 rows of SEQ_LEN tokens per batch);
    `data` sets config.data fields (source or mixture among them)."""
    from fmjax.config import base_config
    config = base_config()
    config.data.tfds_data_dir = "/nonexistent/tfds"  # the mock reads the metadata dir
    config.data.shuffle_buffer = 8
    config.model.seq_len = SEQ_LEN
    config.train.global_batch_size = 4
    config.train.eval_batches = eval_batches
    for key, value in data.items():
        config.data[key] = value
    return config
