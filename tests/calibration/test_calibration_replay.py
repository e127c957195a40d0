"""ReplayReader: a reader without rewind() read more than once, feeds kept as read."""

from __future__ import annotations

import numpy as np

from systolic_sdk.calibration.reader import ArrayReader, ReplayReader, replayable


class _OneShot:
    def __init__(self, n: int) -> None:
        self.batches = [{"x": np.full((1, 2), i, np.float32)} for i in range(n)]
        self.calls = 0

    def get_next(self):
        self.calls += 1
        return self.batches.pop(0) if self.batches else None


def test_replays_what_it_read_and_reads_the_source_once() -> None:
    source = _OneShot(3)
    reader = replayable(source)
    assert isinstance(reader, ReplayReader)
    first = reader.get_next()
    reader.rewind()
    again = [f["x"][0, 0] for f in reader]
    assert first["x"][0, 0] == 0 and again == [0, 1, 2]
    reader.rewind()
    assert [f["x"][0, 0] for f in reader] == [0, 1, 2]
    assert source.calls == 4  # three feeds and one None: never read again
    assert len(reader) == 3


def test_readers_that_rewind_and_non_readers_pass_through() -> None:
    arrays = ArrayReader({"x": np.zeros((4, 2), np.float32)})
    assert replayable(arrays) is arrays
    assert replayable({"x": 1}) == {"x": 1}
