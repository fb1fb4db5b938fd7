"""How a run's history lies in segments: compressed chunks of a stream, pure byte logic.

`checkpoint` stores what `append` computes and decodes what it reads with `inflate`;
nothing here does I/O or knows the message format.

The history is a byte stream (the runner writes one JSON message a line). The stream is
cut into segments, one ConfigMap each. A segment holds its share of the stream as
chunks under binaryData keys `c00000`, `c00001`, ...: each chunk is a whole zlib stream of
the bytes one step appended, compressed with the preset dictionary of the 32 KiB of the
segment's stream before it, so a step of a few hundred bytes compresses nearly as well
as if the segment were compressed whole. Chunks are only ever added, so a step writes
only its own bytes (a merge patch adding one key); closed segments are never written again.

Bounds. A ConfigMap holds at most 1 MiB of data (the API server refuses more, and etcd
stores the whole object on each write). A segment's chunks stay below `SEGMENT_BYTES`
compressed. A segment takes further steps only while smaller than `OPEN_BYTES`: the
API server rewrites the whole object in etcd on every patch, and a small open segment
keeps that cost per step small. A message bigger than what is left in a segment (a
huge tool output) is split across segments at any byte: messages have no size ceiling,
and a segment never waits half empty for a message that cannot fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Sequence

__all__ = [
    "MAX_SEGMENTS",
    "OPEN_BYTES",
    "SEGMENT_BYTES",
    "Chunk",
    "CorruptSegment",
    "HistoryFull",
    "Segment",
    "append",
    "chunk_key",
    "digest",
    "inflate",
]

# Below the API server's 1 MiB limit on a ConfigMap's data, with room for keys, metadata
# and the field-manager bookkeeping each chunk key adds.
SEGMENT_BYTES = 768 * 1024
OPEN_BYTES = 64 * 1024

# The Role names every segment it may read and write (RBAC cannot limit `create` or
# `get` by a name pattern), so their number is fixed. At least OPEN_BYTES each, the
# history can hold 8 MiB compressed whatever the steps, and up to 96 MiB when steps are
# large: tens of megabytes of JSON, more than any model's context window takes.
MAX_SEGMENTS = 128

# zlib's largest preset dictionary.
WINDOW = 32 * 1024

_LEVEL = 6
# Raw bytes fed between sync flushes when a chunk must be cut to fit: deflate never
# grows its input by more than this bound (see zlib's deflateBound), so a piece that fits
# the bound fits the segment whatever the data.
_PIECE_OVERHEAD = 32
_FINISH_RESERVE = 32
_MIN_PIECE = 256


class HistoryFull(Exception):
    """The history needs more than MAX_SEGMENTS segments."""


class CorruptSegment(Exception):
    """A segment's chunks do not decode to what the record says they hold."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk to store: binaryData key `key` of segment `segment`."""

    segment: int
    """Index of the segment, from 0."""
    key: str
    data: bytes
    """A whole zlib stream."""
    raw_size: int
    """Bytes of history it holds."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """The last segment as a writer holds it: what continuing it needs."""

    index: int
    chunks: int = 0
    """Chunks it holds, committed."""
    compressed: bytes = b""
    """Its chunks, concatenated: the digest covers them."""
    raw_size: int = 0
    window: bytes = b""
    """The last WINDOW bytes of its history: the next chunk's preset dictionary."""

    @property
    def size(self) -> int:
        return len(self.compressed)

    @property
    def open(self) -> bool:
        """Whether the next step may add a chunk to it."""
        return self.size < OPEN_BYTES

    def with_chunk(self, chunk: Chunk, raw: bytes) -> Segment:
        return Segment(
            index=self.index,
            chunks=self.chunks + 1,
            compressed=self.compressed + chunk.data,
            raw_size=self.raw_size + len(raw),
            window=(self.window + raw)[-WINDOW:],
        )


def chunk_key(index: int) -> str:
    return f"c{index:05d}"


def digest(compressed: bytes) -> str:
    return hashlib.sha256(compressed).hexdigest()[:32]


def append(last: Segment | None, data: bytes) -> tuple[list[Chunk], list[Segment]]:
    """The chunks that store `data` after `last`, and every segment they touch, in order.

    The first chunk goes into `last` while it is open; what does not fit goes into new
    segments, each filled to SEGMENT_BYTES before the next begins.
    """
    chunks: list[Chunk] = []
    touched: list[Segment] = []
    if not data:
        return chunks, touched
    if last is not None and last.open:
        segment = last
    else:
        segment = _new_segment(0 if last is None else last.index + 1)
    position = 0
    while True:
        compressed, end = _deflate(
            data, start=position, room=SEGMENT_BYTES - segment.size, window=segment.window
        )
        if end > position:
            chunk = Chunk(
                segment=segment.index,
                key=chunk_key(segment.chunks),
                data=compressed,
                raw_size=end - position,
            )
            segment = segment.with_chunk(chunk, data[position:end])
            chunks.append(chunk)
            touched.append(segment)
            position = end
        if position == len(data):
            break
        # Full: the rest goes to a new segment.
        segment = _new_segment(segment.index + 1)
    return chunks, touched


def _new_segment(index: int) -> Segment:
    if index >= MAX_SEGMENTS:
        raise HistoryFull(
            f"The history needs more than {MAX_SEGMENTS} segments of at most "
            f"{SEGMENT_BYTES} compressed bytes."
        )
    return Segment(index=index)


def _deflate(data: bytes, *, start: int, room: int, window: bytes) -> tuple[bytes, int]:
    """A zlib stream of `data[start:end]` no longer than `room` bytes, and `end`.

    `end == start` (and no stream) when not even a small piece fits.
    """
    budget = room - _FINISH_RESERVE
    rest = len(data) - start
    if _bound(min(rest, _MIN_PIECE)) > budget:
        return b"", start
    compressor = zlib.compressobj(_LEVEL, zdict=window) if window else zlib.compressobj(_LEVEL)

    # The usual step: everything fits even if it does not compress at all.
    if _bound(rest) <= budget:
        return compressor.compress(data[start:]) + compressor.flush(), len(data)

    # Otherwise feed pieces that cannot overflow what is left, flushing after each so
    # the output's length is exact, until the space left takes no useful piece.
    out = bytearray()
    position = start
    while position < len(data):
        piece = min(_fitting(budget - len(out)), len(data) - position)
        if piece < min(_MIN_PIECE, len(data) - position):
            break
        out += compressor.compress(data[position : position + piece])
        out += compressor.flush(zlib.Z_SYNC_FLUSH)
        position += piece
    out += compressor.flush(zlib.Z_FINISH)
    return bytes(out), position


def _bound(size: int) -> int:
    """Most bytes deflate may produce for `size` input bytes, with a flush."""
    return size + size // 1000 + _PIECE_OVERHEAD


def _fitting(space: int) -> int:
    """Most input bytes whose `_bound` fits in `space`."""
    return max(0, (space - _PIECE_OVERHEAD) * 1000 // 1001)


def inflate(chunks: Sequence[bytes], *, raw_size: int) -> bytes:
    """The history bytes a segment's chunks hold; raises CorruptSegment.

    `raw_size` is what the record says they hold: a chunk that would decode to more is
    refused before it is decoded whole.
    """
    raw = bytearray()
    for position, data in enumerate(chunks):
        window = bytes(raw[-WINDOW:])
        decompressor = zlib.decompressobj(zdict=window) if window else zlib.decompressobj()
        try:
            piece = decompressor.decompress(data, raw_size - len(raw) + 1)
        except zlib.error as error:
            raise CorruptSegment(
                f"chunk {chunk_key(position)} does not decompress: {error}"
            ) from None
        if len(raw) + len(piece) > raw_size:
            raise CorruptSegment(f"the chunks hold more than the {raw_size} bytes recorded")
        if not decompressor.eof or decompressor.unused_data:
            raise CorruptSegment(f"chunk {chunk_key(position)} is truncated or holds extra bytes")
        raw += piece
    if len(raw) != raw_size:
        raise CorruptSegment(f"the chunks hold {len(raw)} bytes, the record says {raw_size}")
    return bytes(raw)
