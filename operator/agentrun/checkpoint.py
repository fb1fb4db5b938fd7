"""The checkpoint of a run: its history in segments, and the record that owns them.

Both programs call this module. The operator calls `claim` before it starts an attempt's
Job and `read_record` to follow a run; its Role builder calls `segment_names`. The runner
reads with `read_index` and `load_history` and writes through a `Writer`. The kubectl
plugin reads a whole history with `load_history_bytes`.

Objects, all ConfigMaps owned by the AgentRun:

- the index, `names.checkpoint_index(run)`: its `data` holds the `CheckpointRecord`, one
  key per field (`attempt`, `step`, `usage`, ...; each value JSON) and one per segment
  (`segment.000`, ...). It is the single source of truth: the attempt that owns the
  checkpoint, and how much of each segment is committed. A write sends only the keys
  that changed: a step rewrites a few counters and its open segment's entry, not the
  whole record, and closed segments' entries are never sent again.
- the segments, `names.checkpoint_segment(run, i)`: compressed chunks of the history
  under `binaryData` (layout in `segments`). A chunk counts only once the record counts it.

Fencing. `claim` raises the record's attempt before the operator starts that attempt,
and every write of the record is a resourceVersion-checked update, so a runner of an
older attempt (a pod thought dead) has its first write refused: it re-reads, sees it no
longer owns the checkpoint, raises `Fenced` and stops. A runner writes a segment only
with the resourceVersion it last saw, and after any conflict re-checks the record
before it writes again, so a stale runner can never overwrite a chunk the owner wrote.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pydantic

from agentrun import api, kube, names, segments

__all__ = [
    "CheckpointCorrupt",
    "CheckpointFull",
    "Fenced",
    "History",
    "Index",
    "WriteStats",
    "Writer",
    "claim",
    "load_history",
    "load_history_bytes",
    "read_index",
    "read_record",
    "segment_names",
]

log = logging.getLogger(__name__)

# Where an index written before the record was split kept it, whole; still read.
LEGACY_RECORD_KEY = "record"
SEGMENT_KEY_PREFIX = "segment."
RUN_LABEL = "agentrun.dev/run"
RUN_UID_LABEL = "agentrun.dev/run-uid"
PART_LABEL = "agentrun.dev/part"

# Conflicts and unavailable API servers are retried this many times, with a short backoff.
_TRIES = 6
_BACKOFF_SECONDS = (0.1, 0.3, 1.0, 2.0, 4.0)

_T = TypeVar("_T")


class Fenced(Exception):
    """Another attempt owns the checkpoint (or another runner of this one wrote it)."""

    def __init__(self, message: str, *, owner: int) -> None:
        super().__init__(message)
        self.owner = owner
        """The attempt the record names."""


class CheckpointCorrupt(Exception):
    """The checkpoint cannot be read back as it was written."""

    def __init__(self, message: str, *, segment: str | None = None) -> None:
        super().__init__(message)
        self.segment = segment
        """The ConfigMap at fault, when one is."""


class CheckpointFull(Exception):
    """The history outgrew the segments the run's Role may name (see `segment_names`)."""


def segment_names(run_name: str) -> list[str]:
    """Every segment ConfigMap a run may ever have, for its Role's resourceNames.

    Kubernetes RBAC cannot restrict `create` by name, and `get`, `update` and `patch`
    need the names spelled out, so the number is fixed: 128 segments. Each segment is
    closed at 64 KiB to 768 KiB compressed, so a history can hold at least 8 MiB and
    up to 96 MiB of compressed JSON; a run that needs more fails with CheckpointFull.
    """
    return [names.checkpoint_segment(run_name, index) for index in range(segments.MAX_SEGMENTS)]


# --- reading ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Index:
    """The index ConfigMap as read: the record, its exact keys and the resourceVersion."""

    record: api.CheckpointRecord
    data: Mapping[str, str]
    """The ConfigMap's `data` as stored: the record, key by key."""
    version: str
    run_uid: str | None = None
    """The uid of the AgentRun that owns the ConfigMap."""


@dataclasses.dataclass(frozen=True)
class History:
    """The committed history, as the segments hold it.

    `data` is the stream the runner appended: one JSON message a line, each line ending
    with a newline. `last` is what a writer needs to continue the last segment.
    """

    data: bytes
    names: tuple[str, ...] = ()
    starts: tuple[int, ...] = ()
    """Offset in `data` where each segment's bytes start."""
    last: segments.Segment | None = None
    last_version: str | None = None
    """The resourceVersion of the last segment's ConfigMap when it was read."""
    last_keys: frozenset[str] = frozenset()
    """The last segment's binaryData keys when it was read, uncommitted ones included."""

    def lines(self) -> list[bytes]:
        """One JSON message each (split on newlines only: JSON escapes every other break)."""
        lines = self.data.split(b"\n")
        return lines[:-1] if lines[-1:] == [b""] else lines

    def as_json(self) -> bytes:
        """The history as one JSON array: the messages, in order, exactly as written."""
        return b"[" + b",".join(self.lines()) + b"]"

    def segment_at(self, offset: int) -> str | None:
        """The segment holding the byte at `offset` of `data`."""
        found = None
        for name, start in zip(self.names, self.starts, strict=True):
            if start <= offset:
                found = name
        return found


def read_record(api_: Any, namespace: str, run_name: str) -> api.CheckpointRecord | None:
    """The run's checkpoint record, or None before the first claim.

    Raises CheckpointCorrupt when the index holds no readable record.
    """
    index = read_index(api_, namespace, run_name)
    return None if index is None else index.record


def read_index(api_: Any, namespace: str, run_name: str) -> Index | None:
    """The index as read now (a quorum read), or None if it does not exist."""
    body = _ConfigMaps(api_, namespace).get(names.checkpoint_index(run_name))
    return None if body is None else _index_of(body, name=names.checkpoint_index(run_name))


def _index_of(body: dict[str, Any], *, name: str) -> Index:
    data: dict[str, str] = body.get("data") or {}
    return Index(
        record=_record_of(data, name=name),
        data=data,
        version=body["metadata"]["resourceVersion"],
        run_uid=_owner_uid(body),
    )


def _record_of(data: Mapping[str, str], *, name: str) -> api.CheckpointRecord:
    """The record the index's keys hold; raises CheckpointCorrupt naming the index."""
    try:
        if LEGACY_RECORD_KEY in data:
            return api.CheckpointRecord.model_validate_json(data[LEGACY_RECORD_KEY])
        if "attempt" not in data:
            raise CheckpointCorrupt(f"ConfigMap {name} holds no record.", segment=name)
        fields = {k: json.loads(v) for k, v in data.items() if not _is_segment_key(k)}
        count = sum(1 for key in data if _is_segment_key(key))
        fields["segments"] = [json.loads(data[_segment_key(i)]) for i in range(count)]
        return api.CheckpointRecord.model_validate(fields)
    except (pydantic.ValidationError, ValueError, KeyError) as error:
        raise CheckpointCorrupt(
            f"ConfigMap {name} holds a record that does not validate: {error}", segment=name
        ) from error


def _record_data(record: api.CheckpointRecord) -> dict[str, str]:
    """The index's `data` for `record`: a key per field, and one per segment."""
    fields = api.dump(record)
    refs = fields.pop("segments", [])
    data = {key: _compact(value) for key, value in fields.items()}
    data.update({_segment_key(i): _compact(ref) for i, ref in enumerate(refs)})
    return data


def _changes(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str | None]:
    """The merge patch of `data` that turns `old` into `new` (None removes a key)."""
    patch: dict[str, str | None] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({key: None for key in old if key not in new})
    return patch


def _segment_key(position: int) -> str:
    return f"{SEGMENT_KEY_PREFIX}{position:03d}"


def _is_segment_key(key: str) -> bool:
    return key.startswith(SEGMENT_KEY_PREFIX)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _owner_uid(body: dict[str, Any]) -> str | None:
    owners = body["metadata"].get("ownerReferences") or []
    return next((o.get("uid") for o in owners if o.get("kind") == api.KIND), None)


def load_history(api_: Any, namespace: str, record: api.CheckpointRecord) -> History:
    """The history the record commits, read and checked segment by segment.

    Raises CheckpointCorrupt naming the segment that is missing, altered or undecodable;
    a history is never silently shortened.
    """
    configmaps = _ConfigMaps(api_, namespace)
    data = bytearray()
    starts: list[int] = []
    last: segments.Segment | None = None
    last_version: str | None = None
    last_keys: frozenset[str] = frozenset()
    for position, ref in enumerate(record.segments):
        body = configmaps.get(ref.name)
        if body is None:
            raise CheckpointCorrupt(f"Segment {ref.name} does not exist.", segment=ref.name)
        chunks = _committed_chunks(body, ref)
        raw = _inflate(chunks, ref)
        starts.append(len(data))
        data += raw
        if position == len(record.segments) - 1:
            last = segments.Segment(
                index=position,
                chunks=ref.chunks,
                compressed=b"".join(chunks),
                raw_size=len(raw),
                window=raw[-segments.WINDOW :],
            )
            last_version = body["metadata"]["resourceVersion"]
            last_keys = frozenset((body.get("binaryData") or {}).keys())
    return History(
        data=bytes(data),
        names=tuple(ref.name for ref in record.segments),
        starts=tuple(starts),
        last=last,
        last_version=last_version,
        last_keys=last_keys,
    )


def _committed_chunks(body: dict[str, Any], ref: api.SegmentRef) -> list[bytes]:
    stored = body.get("binaryData") or {}
    chunks = []
    for position in range(ref.chunks):
        key = segments.chunk_key(position)
        if key not in stored:
            raise CheckpointCorrupt(
                f"Segment {ref.name} lacks chunk {key} that the record commits.", segment=ref.name
            )
        try:
            chunks.append(base64.b64decode(stored[key], validate=True))
        except ValueError as error:
            raise CheckpointCorrupt(
                f"Segment {ref.name} chunk {key} is not base64: {error}", segment=ref.name
            ) from error
    compressed = b"".join(chunks)
    if len(compressed) != ref.bytes or segments.digest(compressed) != ref.digest:
        raise CheckpointCorrupt(
            f"Segment {ref.name} does not hold the bytes the record commits "
            f"({len(compressed)} bytes, digest {segments.digest(compressed)}; "
            f"recorded {ref.bytes} bytes, digest {ref.digest}).",
            segment=ref.name,
        )
    return chunks


def _inflate(chunks: Sequence[bytes], ref: api.SegmentRef) -> bytes:
    try:
        return segments.inflate(chunks, raw_size=ref.raw_bytes)
    except segments.CorruptSegment as error:
        raise CheckpointCorrupt(f"Segment {ref.name}: {error}.", segment=ref.name) from error


def load_history_bytes(api_: Any, namespace: str, run_name: str) -> bytes:
    """The run's whole history as one JSON array of messages (pydantic-ai's format).

    These are exactly the bytes the runner produced; `[]` before the first step. Raises
    CheckpointCorrupt as `load_history` does, and when the run has no checkpoint yet.
    """
    record = read_record(api_, namespace, run_name)
    if record is None:
        raise CheckpointCorrupt(f"Run {namespace}/{run_name} has no checkpoint yet.")
    return load_history(api_, namespace, record).as_json()


# --- claiming -----------------------------------------------------------------------


def claim(
    api_: Any, *, namespace: str, run_name: str, run_uid: str, attempt: int
) -> api.CheckpointRecord:
    """Make `attempt` the owner of the run's checkpoint, creating the index if need be.

    Idempotent when the record already names `attempt`. It never lowers the attempt:
    raises Fenced when a later attempt already owns it. A new attempt starts with
    outcome Running; pending calls, started calls and the last failure stay, since the
    new attempt acts on them (decisions, interrupted tools) and the failure names its
    own attempt.

    An index left by a deleted run of the same name (owned by another uid, not yet
    collected) is taken over and starts afresh.
    """
    configmaps = _ConfigMaps(api_, namespace)
    name = names.checkpoint_index(run_name)
    meta = _metadata(name, run_name=run_name, run_uid=run_uid)

    def attempt_claim() -> api.CheckpointRecord | None:
        body = configmaps.get(name)
        fresh = api.CheckpointRecord(attempt=attempt, updated_at=_now())
        if body is None:
            configmaps.create({"metadata": meta, "data": _record_data(fresh)})
            return fresh
        if _owner_uid(body) != run_uid:
            configmaps.patch(
                name,
                version=body["metadata"]["resourceVersion"],
                metadata=_owned(meta),
                data=_changes(body.get("data") or {}, _record_data(fresh)),
            )
            return fresh
        index = _index_of(body, name=name)
        if index.record.attempt == attempt:
            return index.record
        if index.record.attempt > attempt:
            raise Fenced(
                f"Attempt {index.record.attempt} already owns the checkpoint of "
                f"{namespace}/{run_name}; attempt {attempt} cannot claim it.",
                owner=index.record.attempt,
            )
        record = index.record.model_copy(
            update={"attempt": attempt, "outcome": api.Outcome.RUNNING, "updated_at": _now()}
        )
        configmaps.patch(
            name, version=index.version, data=_changes(index.data, _record_data(record))
        )
        return record

    if attempt == 1:
        # A first attempt nearly always finds no index: creating it at once saves a read
        # on the path from apply to Job. One left by a deleted run of the same name, or
        # by a claim whose answer was lost, is dealt with by the read-first path.
        fresh = api.CheckpointRecord(attempt=attempt, updated_at=_now())
        with contextlib.suppress(kube.AlreadyExists, kube.Unavailable):
            configmaps.create({"metadata": meta, "data": _record_data(fresh)})
            return fresh
    return _retry_conflicts(attempt_claim)


# --- writing ------------------------------------------------------------------------


@dataclasses.dataclass
class WriteStats:
    """What a writer sent to the API server, for the runner's log and the benchmark."""

    requests: int = 0
    request_bytes: int = 0
    """Bytes of all request bodies (JSON; chunks in base64)."""
    segment_request_bytes: int = 0
    """Bytes of the request bodies that wrote segments."""
    chunk_bytes: int = 0
    """Compressed history bytes in those requests."""


class Writer:
    """The owner's handle on a checkpoint: appends history and writes the record, fenced.

    Not thread-safe: the runner serializes its calls.
    """

    def __init__(
        self,
        api_: Any,
        *,
        namespace: str,
        run_name: str,
        run_uid: str,
        attempt: int,
        index: Index,
        history: History | None,
    ) -> None:
        """`history` None allows writing the record only (a history that did not load)."""
        if index.record.attempt != attempt:
            raise Fenced(
                f"Attempt {index.record.attempt} owns the checkpoint, not attempt {attempt}.",
                owner=index.record.attempt,
            )
        self._configmaps = _ConfigMaps(api_, namespace)
        self._run_name = run_name
        self._run_uid = run_uid
        self._attempt = attempt
        self._index_name = names.checkpoint_index(run_name)
        self._index_version = index.version
        self._record = index.record
        self._data = index.data
        self._history = history
        self._last = history.last if history is not None else None
        self._last_version = history.last_version if history is not None else None
        self._last_keys = history.last_keys if history is not None else frozenset()
        self.stats = WriteStats()
        self._configmaps.stats = self.stats

    @property
    def record(self) -> api.CheckpointRecord:
        """The record as last committed."""
        return self._record

    def commit(self, record: api.CheckpointRecord, *, append: bytes = b"") -> api.CheckpointRecord:
        """Append `append` to the history, then write `record` as the new record.

        The writer fills in what it owns: attempt, segments, bytes, updatedAt. The chunks
        count only once the record is written, so a crash in between loses nothing that
        was committed. Raises Fenced when another attempt owns the checkpoint, and
        CheckpointFull when the history outgrows its segments.
        """
        refs = list(self._record.segments)
        if append:
            if self._history is None:
                raise RuntimeError(
                    "This writer was opened without a history: it writes records only."
                )
            # A runner that lost the checkpoint learns it here, before it writes any chunk:
            # a claim racing with this step can at most leave an uncommitted chunk behind.
            self._check_owner()
            refs = self._append(refs, append)
        record = record.model_copy(
            update={
                "attempt": self._attempt,
                "segments": refs,
                "bytes": sum(ref.bytes for ref in refs),
                "updated_at": _now(),
            }
        )
        self._write_record(record)
        return record

    def _append(self, refs: list[api.SegmentRef], data: bytes) -> list[api.SegmentRef]:
        try:
            chunks, touched = segments.append(self._last, data)
        except segments.HistoryFull as error:
            raise CheckpointFull(str(error)) from error
        for chunk, segment in zip(chunks, touched, strict=True):
            committed = {segments.chunk_key(i) for i in range(segment.chunks - 1)}
            name = names.checkpoint_segment(self._run_name, segment.index)
            continues_last = self._last is not None and segment.index == self._last.index
            version = self._put_chunk(
                name,
                chunk,
                committed=committed,
                version=self._last_version if continues_last else None,
                present=self._last_keys if continues_last else frozenset(),
            )
            ref = api.SegmentRef(
                name=name,
                chunks=segment.chunks,
                bytes=segment.size,
                raw_bytes=segment.raw_size,
                digest=segments.digest(segment.compressed),
            )
            if segment.index < len(refs):
                refs[segment.index] = ref
            else:
                refs.append(ref)
            self._last, self._last_version = segment, version
            self._last_keys = frozenset(committed | {chunk.key})
        return refs

    def _put_chunk(
        self,
        name: str,
        chunk: segments.Chunk,
        *,
        committed: set[str],
        version: str | None,
        present: frozenset[str],
    ) -> str:
        """Store one chunk; the ConfigMap's resourceVersion afterwards.

        A new segment is created. When that name is taken, or the segment changed since it
        was read, someone else wrote it (a runner since fenced, or a write of a step that
        was never committed): once this attempt is known to still own the checkpoint, the
        chunk is written over what is there and the uncommitted keys are removed.
        """
        encoded = base64.b64encode(chunk.data).decode("ascii")
        self.stats.chunk_bytes += len(chunk.data)
        owned: dict[str, Any] | None = None  # set when taking over what someone else wrote
        for attempt_number in range(_TRIES):
            stale = dict.fromkeys(sorted(present - committed - {chunk.key}))
            try:
                if version is None:
                    return self._configmaps.create(
                        {"metadata": self._meta(name), "binaryData": {chunk.key: encoded}}
                    )
                return self._configmaps.patch(
                    name,
                    version=version,
                    metadata=owned,
                    binary_data={chunk.key: encoded, **stale},
                )
            except kube.Conflict:
                log.debug("Segment %s changed since it was read; checking ownership.", name)
                self._check_owner()
                current = self._configmaps.get(name)
                version = None if current is None else current["metadata"]["resourceVersion"]
                present = frozenset(((current or {}).get("binaryData") or {}).keys())
                owned = _owned(self._meta(name))
            except kube.Unavailable as error:
                _pause(attempt_number, error)
        raise kube.Unavailable(f"Segment {name} could not be written after {_TRIES} tries.")

    def _meta(self, name: str) -> dict[str, Any]:
        return _metadata(name, run_name=self._run_name, run_uid=self._run_uid)

    def _write_record(self, record: api.CheckpointRecord) -> None:
        data = _record_data(record)
        for attempt_number in range(_TRIES):
            try:
                # Still a resourceVersion-checked write when few keys change: fencing.
                self._index_version = self._configmaps.patch(
                    self._index_name,
                    version=self._index_version,
                    data=_changes(self._data, data),
                )
            except kube.Conflict:
                self._check_owner()
                continue
            except kube.Unavailable as error:
                _pause(attempt_number, error)
                continue
            self._record, self._data = record, data
            return
        raise kube.Unavailable(f"The record in {self._index_name} could not be written.")

    def _check_owner(self) -> None:
        """Raise Fenced unless the record is still the one this writer last wrote."""
        body = self._configmaps.get(self._index_name)
        if body is None:
            raise Fenced(f"The checkpoint index {self._index_name} is gone.", owner=0)
        index = _index_of(body, name=self._index_name)
        if index.record.attempt != self._attempt:
            raise Fenced(
                f"Attempt {index.record.attempt} now owns the checkpoint; "
                f"attempt {self._attempt} stops.",
                owner=index.record.attempt,
            )
        if index.data != self._data:
            raise Fenced(
                f"Another runner of attempt {self._attempt} wrote the checkpoint.",
                owner=index.record.attempt,
            )
        self._index_version = index.version


# --- the few ConfigMap calls --------------------------------------------------------


class _ConfigMaps:
    """get, create and merge-patch of ConfigMaps as plain JSON, errors translated.

    Bodies bypass the client's models: chunks travel as the base64 text the API speaks.
    """

    def __init__(self, api_: Any, namespace: str) -> None:
        self._api = api_
        self._namespace = namespace
        self.stats = WriteStats()

    def get(self, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            try:
                with kube.translated():
                    response = self._api.read_namespaced_config_map(
                        name, self._namespace, _preload_content=False
                    )
            except kube.NotFound:
                return None
            return _json(response)

        return _retry_unavailable(read)

    def create(self, body: dict[str, Any]) -> str:
        self._count(body)
        with kube.translated():
            response = self._api.create_namespaced_config_map(
                self._namespace, body, _preload_content=False
            )
        return str(_json(response)["metadata"]["resourceVersion"])

    def patch(
        self,
        name: str,
        *,
        version: str,
        metadata: dict[str, Any] | None = None,
        data: dict[str, str | None] | None = None,
        binary_data: dict[str, str | None] | None = None,
    ) -> str:
        """A JSON merge patch carrying `version` as precondition (409 when it moved)."""
        body: dict[str, Any] = {"metadata": {**(metadata or {}), "resourceVersion": version}}
        if data is not None:
            body["data"] = data
        if binary_data is not None:
            body["binaryData"] = binary_data
        self._count(body)
        with kube.translated():
            response = self._api.patch_namespaced_config_map(
                name,
                self._namespace,
                body,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        return str(_json(response)["metadata"]["resourceVersion"])

    def _count(self, body: dict[str, Any]) -> None:
        size = len(json.dumps(body, separators=(",", ":")))
        self.stats.requests += 1
        self.stats.request_bytes += size
        if "binaryData" in body:
            self.stats.segment_request_bytes += size


def _json(response: Any) -> dict[str, Any]:
    data = response.data if hasattr(response, "data") else response
    result: dict[str, Any] = json.loads(data)
    return result


def _metadata(name: str, *, run_name: str, run_uid: str) -> dict[str, Any]:
    # No blockOwnerDeletion: setting it needs permission to update the AgentRun's
    # finalizers, which the runner does not have.
    return {
        "name": name,
        "labels": {
            RUN_LABEL: names.label_value(run_name),
            RUN_UID_LABEL: run_uid,
            PART_LABEL: "checkpoint",
        },
        "ownerReferences": [
            {
                "apiVersion": f"{api.GROUP}/{api.VERSION}",
                "kind": api.KIND,
                "name": run_name,
                "uid": run_uid,
                "controller": True,
            }
        ],
    }


def _owned(meta: dict[str, Any]) -> dict[str, Any]:
    """The parts of `meta` that make a ConfigMap left by another run this run's own."""
    return {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retry_conflicts(action: Callable[[], _T | None]) -> _T:
    for attempt_number in range(_TRIES):
        try:
            result = action()
        except (kube.Conflict, kube.Unavailable) as error:
            _pause(attempt_number, error)
            continue
        if result is not None:
            return result
    raise kube.Unavailable(f"Gave up after {_TRIES} conflicting or failed tries.")


def _retry_unavailable(action: Callable[[], _T]) -> _T:
    for attempt_number in range(_TRIES - 1):
        try:
            return action()
        except kube.Unavailable as error:
            _pause(attempt_number, error)
    return action()


def _pause(attempt_number: int, error: Exception) -> None:
    delay = _BACKOFF_SECONDS[min(attempt_number, len(_BACKOFF_SECONDS) - 1)]
    log.debug("Kubernetes API call failed (%s); trying again in %.1fs.", error, delay)
    time.sleep(delay)
