"""The gradual pruning schedule of Zhu & Gupta 2017 ("To prune, or not to prune",
arXiv:1710.01878, eq. 1) with initial sparsity 0:

    s(t) = s_f * (1 - (1 - (t - t0) / (t1 - t0))^3)     for t0 <= t <= t1

0 before t0, s_f from t1 on (t1 = t0: all at once). It prunes fast while the network is
redundant and slowly near the target. Step t means the weights after t updates
(TrainState.step); the masks are recomputed in the updates that make the steps t0, t0 + f,
t0 + 2f, ... below t1, and t1 (f = config.prune.frequency; step 0, the loaded weights, is
never pruned: t1 >= 1), so the weights of those steps have sparsity exactly s(t), held until
the next one. Works on Python ints and on traced int32 steps alike."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Schedule:
    target: float  # s_f
    start: int  # t0
    end: int  # t1 >= t0
    frequency: int  # f >= 1

    @classmethod
    def from_config(cls, prune_config) -> Schedule:
        p = prune_config
        return cls(float(p.target_sparsity), int(p.start_step), int(p.end_step), int(p.frequency))

    def sparsity(self, step):
        """s(step); a float for an int step, a float32 array for a traced one."""
        if isinstance(step, int):
            if step < self.start:
                return 0.0
            if step >= self.end:
                return self.target
            return self.target * (1 - (1 - (step - self.start) / (self.end - self.start)) ** 3)
        span = max(self.end - self.start, 1)
        progress = jnp.clip((step - self.start) / span, 0.0, 1.0).astype(jnp.float32)
        ramp = self.target * (1 - (1 - progress) ** 3)
        return jnp.where(step >= self.end, jnp.float32(self.target),
                         jnp.where(step < self.start, jnp.float32(0.0), ramp))

    def is_update(self, step):
        """True at the steps whose weights get a new mask (see the module doc)."""
        on_grid = (step - self.start) % self.frequency == 0
        if isinstance(step, int):
            return step == self.end or (max(self.start, 1) <= step < self.end and on_grid)
        return (step == self.end) | ((step >= max(self.start, 1)) & (step < self.end) & on_grid)

    def update_steps(self) -> list[int]:
        return [t for t in range(self.start, self.end, self.frequency) if t >= 1] + [self.end]
