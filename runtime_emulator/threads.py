"""Independent blocks of emulator work on the machine's cores.

The convolution runs as blocks of whole samples (im2col, one float32 GEMM, the
requantization epilogue). :func:`map_blocks` runs those blocks on a small pool of Python
threads (NumPy and BLAS release the GIL), so the copies and the epilogue use every core,
not only the GEMM. While it does, numpy's OpenBLAS runs single-threaded: one BLAS team
per block would oversubscribe the cores (and a BLAS team waiting for a core held by
another process stalls every block). The BLAS thread count is found through OpenBLAS's
own functions in the library numpy loaded; when there is none (another BLAS, another
platform), the blocks run one after the other in the calling thread and BLAS keeps its
threads. Results never depend on any of this: every block writes its own outputs.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: (set, get) function names of OpenBLAS builds: numpy's bundled scipy-openblas (64-bit
#: integers), a 64-bit-integer OpenBLAS, a plain OpenBLAS.
_OPENBLAS_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)

_lock = threading.Lock()
_state: dict[str, Any] = {"pool": None, "workers": None, "blas": None, "depth": 0, "saved": 0}


def _loaded_libraries() -> list[str]:
    """Paths of the shared libraries mapped into this process whose name mentions BLAS."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    paths = {ln.split()[-1] for ln in lines if "blas" in ln.lower() and ln.split()[-1][:1] == "/"}
    return sorted(paths)


def _find_openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    import numpy  # noqa: F401  (loads its BLAS)

    for path in _loaded_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                setter, getter = getattr(lib, set_name), getattr(lib, get_name)
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return setter, getter
    return None


def _blas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    if _state["blas"] is None:
        _state["blas"] = _find_openblas() or False
    return _state["blas"] or None


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


def workers() -> int:
    """How many blocks run at once (1 when the BLAS thread count cannot be controlled)."""
    if _state["workers"] is None:
        _state["workers"] = _default_workers() if _blas() is not None else 1
    return _state["workers"]


def set_workers(n: int | None) -> None:
    """Run at most ``n`` blocks at once (1: serially, in the calling thread); ``None``
    restores the default (one per core, when BLAS threads can be controlled)."""
    with _lock:
        if n is not None and n < 1:
            raise ValueError("the number of workers must be at least 1")
        _state["workers"] = n
        pool = _state["pool"]
        _state["pool"] = None
    if pool is not None:
        pool.shutdown(wait=False)


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """OpenBLAS on one thread while any caller is inside, when blocks run on workers
    (nested and concurrent uses restore the previous count when the last one leaves).

    The executor runs every kernel inside: the emulator's own blocks use the cores, and
    a small GEMM on a two-thread BLAS team costs far more than on one thread (the team
    synchronizes, and spins, on every call; on a loaded machine, many times more).
    """
    blas = _blas()
    if blas is None or workers() <= 1:
        yield
        return
    setter, getter = blas
    with _lock:
        if _state["depth"] == 0:
            _state["saved"] = getter()
            setter(1)
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0:
                setter(_state["saved"])


def _pool() -> ThreadPoolExecutor:
    """The worker pool of this process (a forked child inherits the parent's pool object
    but not its threads, so it makes its own)."""
    with _lock:
        if _state["pool"] is None or _state.get("pid") != os.getpid():
            _state["pool"] = ThreadPoolExecutor(workers(), thread_name_prefix="emulator")
            _state["pid"] = os.getpid()
        return _state["pool"]


def map_blocks(fn: Callable[..., T], blocks: Sequence[tuple[Any, ...]]) -> list[T]:
    """``[fn(*b) for b in blocks]``, the blocks spread over :func:`workers` threads.

    Blocks must be independent (each writes its own part of the output). Exceptions are
    raised in the caller. Calls from inside a worker run serially (no nested pools).
    """
    if min(workers(), len(blocks)) <= 1 or threading.current_thread().name.startswith("emulator"):
        return [fn(*b) for b in blocks]
    with single_threaded_blas():
        pool = _pool()
        futures = [pool.submit(fn, *b) for b in blocks]
        wait(futures)  # every block done before the BLAS thread count is restored
    return [f.result() for f in futures]


#: Elementwise work below this many elements runs in one piece.
MIN_CHUNK = 1 << 16


def map_chunks(
    fn: Callable[..., Any], arrays: Sequence[Any], dtype: Any, axis_len: int | None = None
) -> Any:
    """``fn(*arrays)`` computed in pieces along the first axis, one per worker, into one
    output of element type ``dtype`` (``fn`` must treat the leading axis elementwise:
    ``fn(*parts)[i] == fn(*arrays)[i0 + i]``). Small inputs run in one piece."""
    import numpy as np

    n = axis_len if axis_len is not None else len(arrays[0])
    size = int(np.prod(np.shape(arrays[0])))
    pieces = min(workers(), n)
    if pieces <= 1 or size < MIN_CHUNK:
        return fn(*arrays)
    bounds = [(n * i // pieces, n * (i + 1) // pieces) for i in range(pieces)]
    parts: list[Any] = [None] * pieces

    def run(i: int, i0: int, i1: int) -> None:
        parts[i] = fn(*(a[i0:i1] for a in arrays))

    map_blocks(run, [(i, i0, i1) for i, (i0, i1) in enumerate(bounds)])
    out = np.empty((n,) + tuple(parts[0].shape[1:]), dtype=dtype)
    for (i0, i1), part in zip(bounds, parts, strict=True):
        out[i0:i1] = part
    return out
