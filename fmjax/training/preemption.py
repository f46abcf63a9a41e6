"""SIGTERM / SIGINT handling for long runs on preemptible machines.

The first signal only raises a flag: the loop finishes (or abandons) what it is doing, saves the
last completed step synchronously and exits 0, all within `train.preemption_grace_seconds` of
the signal (the deadline is printed; clusters send SIGKILL after their own grace period, e.g.
Kubernetes' terminationGracePeriodSeconds, so keep ours below it). A second signal stops at
once the usual way (KeyboardInterrupt / exit 143). The grace period is enforced: if the run is
still inside the `with` block when it ends (a save or a collective that hangs), the process
exits with code EXIT_GRACE_EXCEEDED, naming the deadline; the previous committed checkpoint
stays valid (an unfinished save is a tmp directory that restores ignore).

With several processes every process must stop after the same step, or the next collective
deadlocks: `should_stop()` takes the OR of all processes' flags (a tiny all-gather), so a
signal that reached only some hosts stops all of them at the same step.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_GRACE_EXCEEDED = 3


def _exit_now(code: int):
    os._exit(code)  # no cleanup: a hung thread or collective must not keep us past the deadline


class StopRequest:
    """Installed for the duration of a `with` block; restores the previous handlers after."""

    def __init__(self, grace_seconds: float, log=print, on_deadline=_exit_now):
        self.grace_seconds, self.log, self.on_deadline = grace_seconds, log, on_deadline
        self.signal_name: str | None = None
        self.deadline: float | None = None
        self._previous: dict = {}
        self._timer: threading.Timer | None = None

    def __enter__(self):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self._timer is not None:
            self._timer.cancel()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _deadline_passed(self):
        self.log(f"error: the grace period of {self.grace_seconds:g} s after "
                 f"{self.signal_name} ran out before the run stopped; exiting "
                 f"{EXIT_GRACE_EXCEEDED} (the last committed checkpoint is intact; raise "
                 "--config.train.preemption_grace_seconds if saves need longer)")
        self.on_deadline(EXIT_GRACE_EXCEEDED)

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # second signal: give up at once
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.signal_name = signal.Signals(signum).name
        self.deadline = time.monotonic() + self.grace_seconds
        self._timer = threading.Timer(self.grace_seconds, self._deadline_passed)
        self._timer.daemon = True
        self._timer.start()
        self.log(f"{self.signal_name} received: stopping after the current step and saving "
                 f"a checkpoint (grace period {self.grace_seconds:g} s; send it again to "
                 "stop without saving)")

    @property
    def requested(self) -> bool:
        """This process got a signal (no communication; use inside loops that must not block)."""
        return self.signal_name is not None

    def should_stop(self) -> bool:
        """True on every process as soon as any process got a signal (collective)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.any(flags))

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()
