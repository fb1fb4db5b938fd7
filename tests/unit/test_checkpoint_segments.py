"""The byte layout of segments: chunks, bounds and splitting, without any API server."""

from __future__ import annotations

import base64
import json
import os
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentrun import segments


def store(steps: list[bytes]) -> dict[int, list[segments.Chunk]]:
    """Append each step as a writer would; the chunks each segment received, in order."""
    last: segments.Segment | None = None
    stored: dict[int, list[segments.Chunk]] = {}
    for data in steps:
        chunks, touched = segments.append(last, data)
        for chunk in chunks:
            stored.setdefault(chunk.segment, []).append(chunk)
        if touched:
            last = touched[-1]
    return stored


def read(stored: dict[int, list[segments.Chunk]]) -> bytes:
    return b"".join(
        segments.inflate([c.data for c in chunks], raw_size=sum(c.raw_size for c in chunks))
        for _, chunks in sorted(stored.items())
    )


def json_lines(count: int, *, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    words = ["tool", "call", "result", "the", "model", "said", "file", "ok", "é", "😀"]
    return [
        _line(" ".join(rng.choice(words) for _ in range(rng.randint(5, 400)))) for _ in range(count)
    ]


def _line(text: str) -> bytes:
    return json.dumps({"parts": [{"content": text, "part_kind": "text"}]}).encode() + b"\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=5000), max_size=30))
def test_stored_steps_read_back_as_the_same_stream(steps: list[bytes]) -> None:
    stored = store(steps)

    assert read(stored) == b"".join(steps)


def test_many_small_steps_read_back_exactly() -> None:
    steps = json_lines(3000)

    assert read(store(steps)) == b"".join(steps)


def test_every_segment_stays_under_its_bound_even_for_random_bytes() -> None:
    steps = [os.urandom(3_000_000), os.urandom(100), os.urandom(900_000)]

    stored = store(steps)

    assert read(stored) == b"".join(steps)
    sizes = [sum(len(c.data) for c in chunks) for chunks in stored.values()]
    assert len(sizes) >= 5
    assert all(size <= segments.SEGMENT_BYTES for size in sizes)


def test_a_message_bigger_than_a_segment_is_split_across_segments() -> None:
    message = base64.b64encode(os.urandom(2 * segments.SEGMENT_BYTES)) + b"\n"

    stored = store([b"small\n", message, b"after\n"])

    assert read(stored).splitlines() == [b"small", message[:-1], b"after"]
    holding = [index for index, chunks in stored.items() if any(c.raw_size > 1000 for c in chunks)]
    assert len(holding) >= 3


def test_a_segment_is_closed_once_it_reaches_the_open_bound() -> None:
    steps = json_lines(6000)

    stored = store(steps)

    *closed, _last = [sum(len(c.data) for c in chunks) for _, chunks in sorted(stored.items())]
    assert closed, "expected the history to need more than one segment"
    assert all(segments.OPEN_BYTES <= size <= segments.SEGMENT_BYTES for size in closed)


def test_closed_segments_receive_no_further_chunks() -> None:
    last: segments.Segment | None = None
    closed: set[int] = set()

    for data in json_lines(6000):
        chunks, touched = segments.append(last, data)
        assert not {chunk.segment for chunk in chunks} & closed
        if touched:
            if last is not None and touched[-1].index != last.index:
                closed.add(last.index)
            closed.update(s.index for s in touched if not s.open)
            last = touched[-1]

    assert closed


def test_small_steps_compress_nearly_as_well_as_the_whole() -> None:
    steps = json_lines(2000)
    whole = len(zlib.compress(b"".join(steps), 6))

    stored = store(steps)

    compressed = sum(len(c.data) for chunks in stored.values() for c in chunks)
    assert compressed < 1.6 * whole


def test_chunks_are_keyed_in_order_from_zero_in_each_segment() -> None:
    stored = store([os.urandom(1_000_000), b"x" * 10, b"y" * 10])

    for chunks in stored.values():
        assert [c.key for c in chunks] == [segments.chunk_key(i) for i in range(len(chunks))]


def test_the_history_refuses_to_grow_past_the_last_segment_name() -> None:
    last = segments.Segment(index=segments.MAX_SEGMENTS - 1, compressed=b"x" * segments.OPEN_BYTES)

    with pytest.raises(segments.HistoryFull):
        segments.append(last, b"more\n")


def test_a_damaged_chunk_is_refused() -> None:
    stored = store([b"hello world\n" * 100, b"again\n" * 100])
    chunks = [c.data for c in stored[0]]
    raw_size = sum(c.raw_size for c in stored[0])
    damaged = [chunks[0], chunks[1][:5] + bytes([chunks[1][5] ^ 0xFF]) + chunks[1][6:]]

    with pytest.raises(segments.CorruptSegment):
        segments.inflate(damaged, raw_size=raw_size)


def test_a_chunk_holding_more_than_recorded_is_refused() -> None:
    stored = store([b"a" * 10_000])

    with pytest.raises(segments.CorruptSegment, match="more than"):
        segments.inflate([stored[0][0].data], raw_size=100)


def test_nothing_to_append_writes_nothing() -> None:
    assert segments.append(None, b"") == ([], [])
