"""The grain input pipeline: per-process batches of packed rows, checkpointable, deterministic.

Train: all documents -> seeded shuffle per epoch (order = f(seed, epoch, index)), repeated
forever -> dealt to S row streams (`config.data.streams`, fmjax/data/streams.py: stream j gets
every S-th document) -> in each stream: tokenize -> chunk + first-fit pack into rows of T
tokens -> seeded window shuffle of rows -> B/S rows per step. Row r of the global batch of step
s comes from stream r // (B/S), so the global batch is a pure function of (seed, s), whatever
the process count, and each process reads, tokenizes and packs only the documents of the
streams whose rows it holds (B_local = global_batch_size // process_count; by default the
contiguous block [i * B_local, (i + 1) * B_local), or the rows its devices hold,
`rows=process_rows(sharding)`). A run on 2 hosts trains on exactly the batches of a run on 1
host, and a checkpoint resumes on another process count: iterator states are keyed by stream.
Each batch is a dict of int32 numpy arrays `tokens_BT`, `segment_ids_BT`, `positions_BT` under
the keys 'tokens', 'segment_ids', 'positions'. T is the `row_length` the caller passes: the
objective's raw row length (`Engine.row_length()`: model.seq_len, or more for span corruption,
whose encoder input is then exactly seq_len); model.seq_len when not given. The iterator's
`get_state()` / `set_state()` (and orbax via `grain.checkpoint.CheckpointSave` /
`CheckpointRestore`) resume it exactly.

Mixtures (`config.data.mixture`, fmjax/data/mixture.py): each component's documents are
shuffled per epoch with a seed derived from (seed, component name) and repeated, then
interleaved by grain's `MapDataset.mix` in proportion to the weights, all before tokenization;
the mixed stream is still a pure function of (seed, index), so everything above holds.

Eval: the validation split, unshuffled and cycled, packed the same way; identical every call.
A mixture evaluates its components' validation splits mixed with the same weights.
"""
from __future__ import annotations

import hashlib
import math

from absl import flags
import grain
import jax
import numpy as np

from fmjax.config import ConfigError
from fmjax.data import mixture, streams
from fmjax.data.packing import TokenizeDocument, pack_documents
from fmjax.data.sources import get_source

# Open rows during first-fit packing; at T=256 on the stdlib corpus 64 bins pad <1% of tokens
# (8 bins: 1.6%).
PACKING_BINS = 64
# A thread tokenizing documents ahead of packing (SentencePiece holds the GIL, so more threads
# do not help; use data.num_workers), and how many documents it may run ahead.
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=64)
# Training reads S row streams (fmjax/data/streams.py): each tokenizes in the thread that reads
# the batches (ThreadPrefetchIterDataset, one for all streams) and packs over fewer open rows
# (at T=256 on the stdlib corpus 8 bins pad 1.6% of tokens), so one stream per batch row stays
# cheap in threads and memory.
STREAM_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
STREAM_PACKING_BINS = 8


def derive_seed(seed: int, purpose: str) -> int:
    """A 32-bit seed for one random choice of the pipeline, a pure function of (seed, purpose)."""
    digest = hashlib.sha1(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def process_shard(global_batch_size: int, process_index: int | None,
                  process_count: int | None):
    """(process_index, process_count, local batch size) of train.global_batch_size, defaulting
    to this JAX process."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise ConfigError(
            f"config.train.global_batch_size = {global_batch_size}: not divisible "
            f"by the {count} processes; use a multiple of {count}")
    return index, count, global_batch_size // count


def block_rows(index: int, count: int, global_batch_size: int) -> list[int]:
    """Process `index`'s rows of a global batch by default: one contiguous block."""
    local = global_batch_size // count
    return list(range(index * local, (index + 1) * local))


def process_rows(sharding, global_batch_size: int) -> list[int]:
    """The global batch rows this process's devices hold under `sharding` (a [B, ...] batch
    sharding), in the order `jax.make_array_from_process_local_data` expects them."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_batch_size,)).values():
        rows.update(range(global_batch_size)[index[0]])
    return sorted(rows)


class SelectRows(grain.transforms.Map):
    """Keeps the given rows of every array of a batch (this process's share of a global one)."""

    def __init__(self, rows, global_batch_size: int):
        self.rows, self.everything = np.asarray(rows), list(rows) == list(range(global_batch_size))

    def map(self, batch):
        if self.everything:
            return batch
        return {k: v[self.rows] for k, v in batch.items()}


def _rows_for(size: int, index: int, count: int, rows) -> list[int]:
    """Process `index`'s rows of a global batch of `size` (train.global_batch_size), checked."""
    rows = block_rows(index, count, size) if rows is None else list(rows)
    distinct = set(rows)
    if len(distinct) != size // count or len(rows) != len(distinct) or not all(
            0 <= r < size for r in rows):
        raise ConfigError(f"rows={rows}: expected {size // count} distinct rows of the global "
                          f"batch of config.train.global_batch_size = {size}")
    return rows


def shard_documents(source, index: int, count: int, split: str) -> grain.MapDataset:
    """This process's documents: every `count`-th one starting at `index`."""
    documents = grain.MapDataset.source(source)[index::count]
    if len(documents) == 0:
        raise ConfigError(
            f"the {split} split of config.data.source has {len(source)} documents, too few for "
            f"{count} processes (process {index} gets none); add data or, for validation, "
            "raise --config.data.validation_percent")
    return documents


def packed_batches(documents: grain.MapDataset, config, tokenizer, batch_size: int,
                   *, row_shuffle_seed: int | None, row_length: int | None = None,
                   shuffle_window: int | None = None, num_bins: int = PACKING_BINS,
                   read_options: grain.ReadOptions = READ_OPTIONS) -> grain.IterDataset:
    """Document stream -> tokenized -> packed rows -> (window-shuffled) batches of rows.
    Rows hold `row_length` tokens; None = model.seq_len (an objective that consumes more raw
    tokens per row, such as span corruption, says how many: `Engine.row_length()`).
    Rows are shuffled in windows of `shuffle_window` rows (None = data.shuffle_buffer)."""
    token_streams = documents.map(TokenizeDocument(tokenizer)).to_iter_dataset(read_options)
    row_length = row_length or config.model.seq_len
    rows = pack_documents(token_streams, seq_len=row_length, pad_id=tokenizer.pad_id,
                          num_bins=num_bins)
    window = config.data.shuffle_buffer if shuffle_window is None else shuffle_window
    if row_shuffle_seed is not None and window > 1:
        rows = grain.experimental.WindowShuffleIterDataset(
            rows, window_size=window, seed=row_shuffle_seed)
    return rows.batch(batch_size, drop_remainder=True)


def train_dataset(config, tokenizer, *, process_index: int | None = None,
                  process_count: int | None = None, row_length: int | None = None,
                  rows=None) -> grain.IterDataset:
    """This process's rows (`rows`, default `block_rows`) of the global training batches: the
    batches of the row streams it owns (fmjax/data/streams.py), each stream packing every S-th
    document on its own, read ahead by one background thread (or data.num_workers processes)."""
    index, count, _ = process_shard(config.train.global_batch_size, process_index, process_count)
    rows = _rows_for(config.train.global_batch_size, index, count, rows)
    size, num_streams = config.train.global_batch_size, streams.num_streams(config)
    owned = streams.owned_streams(rows, num_streams, size)
    documents = train_documents(config)
    window = max(1, config.data.shuffle_buffer // num_streams)
    stream_batches = [
        packed_batches(documents[j::num_streams], config, tokenizer, size // num_streams,
                       row_shuffle_seed=(derive_seed(config.seed, f"rows/{j}")
                                         if config.data.shuffle else None),
                       row_length=row_length, shuffle_window=window,
                       num_bins=STREAM_PACKING_BINS, read_options=STREAM_READ_OPTIONS)
        for j in owned]
    batches = streams.RowStreams(stream_batches, owned, rows)
    if config.data.num_workers <= 0:
        return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=2)
    return with_workers(batches, config.data.num_workers)


def train_documents(config) -> grain.MapDataset:
    """The endless training documents, element i a pure function of (seed, i): the source's
    documents shuffled per epoch, or a mixture's components, each shuffled per epoch with its
    own seed, interleaved in proportion to their weights."""
    num_streams = streams.num_streams(config)

    def shuffled_epochs(source, purpose: str) -> grain.MapDataset:
        if not config.data.mixture and len(source) < num_streams:
            raise ConfigError(
                f"the train split of config.data.source = {config.data.source!r} has "
                f"{len(source)} documents, fewer than its {num_streams} row streams "
                "(config.data.streams; 0 = one per batch row), which would read the same "
                "documents; set --config.data.streams=1 or a smaller divisor of the batch")
        return epochs(source, shuffle=config.data.shuffle, seed=config.seed,
                      shuffle_purpose=purpose)

    return each_source(config, "train", shuffled_epochs)


def epochs(source, *, shuffle: bool, seed: int, shuffle_purpose: str) -> grain.MapDataset:
    """`source` repeated forever; epoch e shuffled (if data.shuffle) with a seed derived from
    (seed, shuffle_purpose) and folded with e."""
    documents = shard_documents(source, 0, 1, "train")
    if shuffle:
        documents = documents.shuffle(seed=derive_seed(seed, shuffle_purpose))
    return documents.repeat()


def eval_documents(config) -> grain.MapDataset:
    """The validation documents in order, cycled; a mixture's components' validation splits
    (each cycled) interleaved with the training weights."""
    return each_source(config, "validation",
                       lambda source, _: shard_documents(source, 0, 1, "validation").repeat())


def each_source(config, split: str, documents_of) -> grain.MapDataset:
    """`documents_of(source, purpose)` of config.data.source's `split` (purpose 'documents'),
    or of each mixture component's (purpose 'documents/NAME'), mixed by grain in proportion to
    the weights."""
    if not config.data.mixture:
        return documents_of(get_source(config, split), "documents")
    opened = mixture.open_components(config, split, get_source)
    return grain.MapDataset.mix(
        [documents_of(source, f"documents/{component.name}") for component, source in opened],
        [component.weight for component, _ in opened])


def with_workers(batches: grain.IterDataset, num_workers: int) -> grain.IterDataset:
    """`batches` produced by `num_workers` (data.num_workers) grain worker processes (0 = in
    this one)."""
    if num_workers <= 0:
        return batches
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; outside absl.app
        flags.FLAGS.mark_as_parsed()  # (notebooks, tests) their defaults are used.
    return batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))


def example_batches(examples: grain.MapDataset, encode: grain.transforms.Map, config,
                    batch_size: int, *, shuffle_purpose: str) -> grain.IterDataset:
    """Unpacked training rows, one example each (fine-tune sources): shuffled per epoch with a
    seed derived from (seed, shuffle_purpose) so order = f(seed, epoch, index), repeated
    forever, encoded, batched, checkpointable."""
    if config.data.shuffle:
        examples = examples.shuffle(seed=derive_seed(config.seed, shuffle_purpose))
    rows = examples.repeat().map(encode)
    return with_workers(rows.to_iter_dataset(READ_OPTIONS).batch(batch_size, drop_remainder=True),
                        config.data.num_workers)


def one_pass_rows(num_examples: int, process_count: int, batch_size: int) -> int:
    """Rows each process evaluates in one pass over `num_examples` split every count-th:
    ceil(ceil(N / count) / B) * B, the same on every process (multi-host steps stay in
    lockstep); rows past a process's examples are padding."""
    return math.ceil(math.ceil(num_examples / process_count) / batch_size) * batch_size


def make_train_iterator(config, tokenizer, *, process_index: int | None = None,
                        process_count: int | None = None, row_length: int | None = None,
                        rows=None) -> grain.DatasetIterator:
    """An endless, checkpointable iterator over this process's rows of the global training
    batches (rows of `row_length` tokens; None = model.seq_len)."""
    return iter(train_dataset(config, tokenizer, process_index=process_index,
                              process_count=process_count, row_length=row_length, rows=rows))


def make_eval_batches(config, tokenizer, *, process_index: int | None = None,
                      process_count: int | None = None,
                      row_length: int | None = None, rows=None) -> list[dict[str, np.ndarray]]:
    """`config.train.eval_batches` validation batches, this process's rows of the same global
    batches every call and for any process count (rows of `row_length` tokens; None = the
    objective's row length)."""
    size = config.train.global_batch_size
    index, count, _ = process_shard(size, process_index, process_count)
    select = SelectRows(_rows_for(size, index, count, rows), size)
    batches = iter(packed_batches(eval_documents(config), config, tokenizer,
                                  config.train.global_batch_size, row_shuffle_seed=None,
                                  row_length=row_length))
    return [select.map(next(batches)) for _ in range(config.train.eval_batches)]


def global_batch(local_batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Assembles every process's [B_local, T] arrays into global [B, T] jax.Arrays."""
    return {key: jax.make_array_from_process_local_data(sharding, value_BT)
            for key, value_BT in local_batch.items()}
