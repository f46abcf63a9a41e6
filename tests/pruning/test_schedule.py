"""The cubic schedule of Zhu & Gupta 2017 at its start, end and middle, on Python ints and
traced steps alike, and the steps whose weights get a new mask."""
import jax
import jax.numpy as jnp
import pytest

from fmjax.pruning.schedule import Schedule


def test_values_at_start_middle_and_end():
    s = Schedule(target=0.8, start=10, end=20, frequency=3)
    assert s.sparsity(0) == 0.0 and s.sparsity(10) == 0.0
    assert s.sparsity(15) == pytest.approx(0.8 * (1 - 0.5 ** 3))  # 0.7: fast early
    assert s.sparsity(20) == 0.8 and s.sparsity(100) == 0.8
    values = [s.sparsity(t) for t in range(10, 21)]
    assert values == sorted(values)  # monotone
    traced = jax.jit(s.sparsity)(jnp.arange(0, 25))
    assert traced.tolist() == pytest.approx([s.sparsity(t) for t in range(25)], abs=1e-6)
    assert float(traced[20]) == float(jnp.float32(0.8))  # the target itself, at the end


def test_update_steps():
    s = Schedule(target=0.8, start=10, end=20, frequency=3)
    assert s.update_steps() == [10, 13, 16, 19, 20]
    assert [t for t in range(30) if s.is_update(t)] == [10, 13, 16, 19, 20]
    traced = jax.jit(s.is_update)(jnp.arange(30))
    assert [t for t in range(30) if traced[t]] == [10, 13, 16, 19, 20]
    once = Schedule(target=0.5, start=0, end=1, frequency=10)  # the default: at the first update
    assert once.update_steps() == [1] and once.sparsity(1) == 0.5 and once.sparsity(0) == 0.0
