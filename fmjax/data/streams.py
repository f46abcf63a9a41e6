"""Row streams: how the rows of a global batch are split so that each process reads only its share.

The training data is cut into S independent streams (`config.data.streams`; 0 = one per row of
the global batch). Stream j reads every S-th document of the shuffled document order, packs
them into rows on its own and gives the same B/S rows (a contiguous block) of every global
batch:

    global batch row r of step s  =  row (s * B/S + r mod B/S) of stream r // (B/S)

A process owns the streams whose rows its devices hold, so it tokenizes and packs only those
documents (1/P of the data on P processes), and the global batch of step s is still a pure
function of (seed, s), whatever the process count. Each stream's grain state is saved under its
own index, so a checkpoint written by P processes resumes on any other count: a process picks
the states of the streams it owns now from whichever process wrote them.
"""
from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from fmjax.config import ConfigError

STATE_KEY = "streams"  # an iterator state holding row streams: {STATE_KEY: {"j": state of j}}


def num_streams(config) -> int:
    """S, checked against the global batch size."""
    size = config.train.global_batch_size
    streams = config.data.streams or size
    if streams < 1 or size % streams:
        raise ConfigError(
            f"config.data.streams = {config.data.streams}: must divide "
            f"config.train.global_batch_size = {size} (each stream gives the same number of rows "
            "of every batch); use a divisor such as 0 (one stream per row)")
    return streams


def owned_streams(rows: Sequence[int], streams: int, global_batch_size: int) -> list[int]:
    """The streams whose rows are exactly `rows` (this process's rows of the global batch)."""
    per_stream = global_batch_size // streams
    owned = sorted({r // per_stream for r in rows})
    if sorted(rows) != [j * per_stream + k for j in owned for k in range(per_stream)]:
        raise ConfigError(
            f"this process holds global batch rows {sorted(rows)}, which split streams of "
            f"{per_stream} rows (config.data.streams = {streams}); set --config.data.streams "
            "to a multiple of the number of processes, e.g. 0 (one stream per row)")
    return owned


class RowStreams(grain.IterDataset):
    """Batches of this process's rows: the batches of each owned stream, concatenated in the
    order of `rows`. `parents` are the owned streams' batch datasets, `stream_ids` their
    indices j."""

    def __init__(self, parents: Sequence[grain.IterDataset], stream_ids: Sequence[int],
                 rows: Sequence[int]):
        super().__init__(list(parents))
        self.stream_ids = list(stream_ids)
        # Stream batches concatenated are the rows in sorted order; `order` puts them in `rows`'.
        self.order = np.argsort(np.argsort(np.asarray(rows)))

    def __iter__(self) -> "_RowStreamsIterator":
        return _RowStreamsIterator(self)

    def __str__(self) -> str:
        return f"RowStreams(streams={self.stream_ids})"


class _RowStreamsIterator(grain.DatasetIterator):
    def __init__(self, dataset: RowStreams):
        super().__init__([iter(p) for p in dataset.parents])
        self.stream_ids, self.order = dataset.stream_ids, dataset.order

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(it) for it in self._parents]
        return {key: np.concatenate([b[key] for b in batches])[self.order]
                for key in batches[0]}

    def get_state(self) -> dict[str, Any]:
        """Keyed by stream, so any process can read it."""
        return {STATE_KEY: {str(j): it.get_state()
                            for j, it in zip(self.stream_ids, self._parents)}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Takes the owned streams' states from `state` (which may hold other streams too: the
        merged states of every process that wrote a checkpoint)."""
        saved = state[STATE_KEY]
        missing = [j for j in self.stream_ids if str(j) not in saved]
        if missing:
            raise KeyError(f"the saved data state has no stream {missing[0]} (it has "
                           f"{len(saved)} streams); was it written with another data.streams?")
        for j, it in zip(self.stream_ids, self._parents):
            it.set_state(saved[str(j)])


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One state holding every stream of the per-process states of a checkpoint."""
    merged: dict[str, Any] = {}
    for state in states:
        merged.update(state[STATE_KEY])
    return {STATE_KEY: merged}
