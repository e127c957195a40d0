"""Blocks of work on worker threads (``runtime_emulator.threads``): same results as a
serial loop, errors reach the caller, the BLAS thread count is restored."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime_emulator import threads


@pytest.fixture
def two_workers():
    threads.set_workers(2)
    yield
    threads.set_workers(None)


def test_blocks_run_on_workers_and_write_their_own_parts(two_workers: None) -> None:
    out = np.zeros((6, 100), dtype=np.float32)
    names: set[str] = set()
    a = np.arange(100 * 100, dtype=np.float32).reshape(100, 100) % 7

    def block(i: int) -> int:
        names.add(threading.current_thread().name)
        out[i] = a[i] @ a
        return i

    assert threads.map_blocks(block, [(i,) for i in range(6)]) == list(range(6))
    np.testing.assert_array_equal(out, a[:6] @ a)
    assert all(n.startswith("emulator") for n in names)


def test_a_failing_block_raises_in_the_caller(two_workers: None) -> None:
    def block(i: int) -> int:
        if i == 2:
            raise ValueError("block 2 failed")
        return i

    with pytest.raises(ValueError, match="block 2 failed"):
        threads.map_blocks(block, [(i,) for i in range(4)])


def test_blas_thread_count_is_restored(two_workers: None) -> None:
    blas = threads._blas()
    if blas is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS whose thread count can be set")
    setter, getter = blas
    before = getter()
    seen: list[int] = []
    threads.map_blocks(lambda i: seen.append(getter()), [(0,), (1,)])
    assert seen == [1, 1]
    assert getter() == before


def test_one_worker_runs_in_the_calling_thread() -> None:
    threads.set_workers(1)
    try:
        names = threads.map_blocks(lambda: threading.current_thread().name, [(), ()])
        assert names == [threading.current_thread().name] * 2
        with pytest.raises(ValueError):
            threads.set_workers(0)
    finally:
        threads.set_workers(None)


@pytest.mark.parametrize("n", [1, 2, 7, 300])
def test_map_chunks_equals_one_piece(two_workers: None, n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.integers(-128, 128, (n, 300)).astype(np.int8)
    b = rng.integers(-128, 128, (n, 300)).astype(np.int8)

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x.astype(np.int16) * 3 - y).astype(np.int16)

    got = threads.map_chunks(fn, [a, b], np.int16)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, fn(a, b))


def test_a_forked_child_makes_its_own_pool(two_workers: None) -> None:
    """A child forked after the pool exists must not queue work on the parent's pool
    object (its threads do not exist in the child)."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    threads.map_blocks(lambda i: i, [(0,), (1,)])  # the parent's pool exists
    parent_pool = id(threads._state["pool"])
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        result, child_pool = pool.apply_async(_blocks_in_child).get(timeout=60)
    assert result == [0, 1, 4]
    assert child_pool != parent_pool


def _blocks_in_child() -> tuple[list[int], int]:
    result = threads.map_blocks(lambda i: i * i, [(0,), (1,), (2,)])
    return result, id(threads._state["pool"])
