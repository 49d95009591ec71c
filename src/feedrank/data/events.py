"""Validation of incoming events (pure) and their JSON form.

    event = parse_event({"event_id": "e1", "ts": 1714000000, "user_id": "u1",
                         "item_id": "n42", "kind": "click"}, now=time.time())

``parse_event`` checks every field and raises one ``SchemaError`` whose ``problems``
name every bad field (``"<field>: <what is wrong>"``). It does no I/O and reads no
clock: ``now`` is passed in (it bounds ``ts`` from above).

``event_to_dict`` / ``event_from_dict`` are the JSON round trip used by the event log;
``parse_event(event_to_dict(e), now) == e`` for every valid event. ``columns_from_dicts``
is ``event_from_dict`` for a batch, as ``EventColumns`` (the live consumer's read path).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np

from feedrank.data.schema import TS_MIN_S
from feedrank.errors import SchemaError
from feedrank.types import EVENT_KINDS, KIND_CODES, Event, EventColumns, EventKind

MAX_EVENT_ID_LEN = 128
MAX_ID_LEN = 256  # user_id, item_id, request_id
MAX_FUTURE_S = 86_400.0  # events may be at most one day ahead of the server clock

REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "ts", "user_id", "item_id", "kind")
OPTIONAL_FIELDS: tuple[str, ...] = ("position", "request_id", "propensity", "dwell_ms", "arm")
ALL_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + OPTIONAL_FIELDS


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_id(obj: Mapping[str, Any], name: str, max_len: int, problems: list[str], *, nullable: bool) -> str | None:
    if name not in obj or obj[name] is None:
        if not nullable:
            problems.append(f"{name}: required" if name not in obj else f"{name}: must not be null")
        return None
    v = obj[name]
    if not isinstance(v, str):
        problems.append(f"{name}: expected a string, got {type(v).__name__}")
        return None
    if not v.strip():
        problems.append(f"{name}: must be a non-empty string")
        return None
    if len(v) > max_len:
        problems.append(f"{name}: longer than {max_len} characters ({len(v)})")
        return None
    return v


def _parse_ts(obj: Mapping[str, Any], now: float, problems: list[str]) -> float | None:
    if "ts" not in obj or obj["ts"] is None:
        problems.append("ts: required" if "ts" not in obj else "ts: must not be null")
        return None
    v = obj["ts"]
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.strip())
        except ValueError:
            problems.append(f"ts: not an ISO-8601 timestamp: {v[:64]!r}")
            return None
        if dt.tzinfo is None:  # naive times are UTC
            dt = dt.replace(tzinfo=timezone.utc)
        ts = dt.timestamp()
    elif _is_number(v):
        ts = float(v)
        if not math.isfinite(ts):
            problems.append(f"ts: must be finite, got {v!r}")
            return None
    else:
        problems.append(f"ts: expected epoch seconds (number) or an ISO-8601 string, got {type(v).__name__}")
        return None
    if ts < TS_MIN_S:
        problems.append(f"ts: {ts!r} is before 1990-01-01")
        return None
    if ts > now + MAX_FUTURE_S:
        hint = " (milliseconds? ts is in seconds)" if ts > 1e11 else ""
        problems.append(f"ts: {ts!r} is more than one day in the future{hint}")
        return None
    return ts


def _parse_float(
    obj: Mapping[str, Any], name: str, problems: list[str], *, lo: float, lo_open: bool, hi: float | None
) -> float | None:
    v = obj.get(name)
    if v is None:
        return None
    if not _is_number(v):
        problems.append(f"{name}: expected a number, got {type(v).__name__}")
        return None
    x = float(v)
    if not math.isfinite(x):
        problems.append(f"{name}: must be finite, got {v!r}")
        return None
    if (x <= lo) if lo_open else (x < lo):
        problems.append(f"{name}: must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
        return None
    if hi is not None and x > hi:
        problems.append(f"{name}: must be <= {hi:g}, got {v!r}")
        return None
    return x


def parse_event(obj: Any, now: float) -> Event:
    """Validate one event (a decoded JSON object) and return it as an ``Event``.

    Fields: event_id (non-empty str, <= 128 chars), ts (epoch seconds or ISO-8601; finite;
    not before 1990, at most one day after ``now``), user_id and item_id (non-empty str),
    kind (impression|click|dwell|hide), position (int >= 0 or null), request_id (str or
    null), propensity (0 < p <= 1 or null), dwell_ms (finite >= 0; required for dwell), arm
    (str or null: the experiment arm that served the request).
    Unknown fields are rejected.

    Raises:
        SchemaError: with one ``"<field>: <problem>"`` entry per bad field.
    """
    if not isinstance(obj, Mapping):
        raise SchemaError("invalid event", [f"event: expected a JSON object, got {type(obj).__name__}"])
    problems: list[str] = []
    for key in obj:
        if key not in ALL_FIELDS:
            problems.append(f"{str(key)[:64]}: unknown field (allowed: {', '.join(ALL_FIELDS)})")

    event_id = _check_id(obj, "event_id", MAX_EVENT_ID_LEN, problems, nullable=False)
    ts = _parse_ts(obj, now, problems)
    user_id = _check_id(obj, "user_id", MAX_ID_LEN, problems, nullable=False)
    item_id = _check_id(obj, "item_id", MAX_ID_LEN, problems, nullable=False)

    kind: EventKind | None = None
    raw_kind = obj.get("kind")
    if "kind" not in obj:
        problems.append("kind: required")
    elif not isinstance(raw_kind, str) or raw_kind not in EVENT_KINDS:
        problems.append(f"kind: must be one of {'|'.join(EVENT_KINDS)}, got {str(raw_kind)[:64]!r}")
    else:
        kind = EventKind(raw_kind)

    position = obj.get("position")
    if position is not None:
        if isinstance(position, bool) or not isinstance(position, int):
            problems.append(f"position: expected an integer >= 0 or null, got {type(position).__name__}")
            position = None
        elif position < 0:
            problems.append(f"position: must be >= 0, got {position}")
            position = None

    request_id = _check_id(obj, "request_id", MAX_ID_LEN, problems, nullable=True)
    arm = _check_id(obj, "arm", MAX_ID_LEN, problems, nullable=True)
    propensity = _parse_float(obj, "propensity", problems, lo=0.0, lo_open=True, hi=1.0)
    dwell_ms = _parse_float(obj, "dwell_ms", problems, lo=0.0, lo_open=False, hi=None)
    if kind is EventKind.DWELL and obj.get("dwell_ms") is None:
        problems.append("dwell_ms: required for kind 'dwell'")

    if problems:
        where = f"event {event_id!r}" if event_id else "event"
        raise SchemaError(f"invalid {where}", problems)
    assert event_id is not None and ts is not None and user_id is not None
    assert item_id is not None and kind is not None
    return Event(
        event_id=event_id,
        ts=ts,
        user_id=user_id,
        item_id=item_id,
        kind=kind,
        position=position,
        request_id=request_id,
        propensity=propensity,
        dwell_ms=dwell_ms,
        arm=arm,
    )


def event_to_dict(event: Event) -> dict[str, Any]:
    """Plain JSON-ready dict (kind as its string value; optional fields as null)."""
    return {
        "event_id": event.event_id,
        "ts": event.ts,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "kind": event.kind.value if isinstance(event.kind, EventKind) else str(event.kind),
        "position": event.position,
        "request_id": event.request_id,
        "propensity": event.propensity,
        "dwell_ms": event.dwell_ms,
        "arm": event.arm,
    }


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """Inverse of ``event_to_dict`` for trusted data (the event log); light checks only.

    Use ``parse_event`` for anything that comes from outside the process.

    Raises:
        SchemaError: a required key is missing or ``kind`` is unknown.
    """
    try:
        pos = d.get("position")
        prop = d.get("propensity")
        dwell = d.get("dwell_ms")
        return Event(
            event_id=d["event_id"],
            ts=float(d["ts"]),
            user_id=d["user_id"],
            item_id=d["item_id"],
            kind=EventKind(d["kind"]),
            position=None if pos is None else int(pos),
            request_id=d.get("request_id"),
            propensity=None if prop is None else float(prop),
            dwell_ms=None if dwell is None else float(dwell),
            arm=d.get("arm"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise SchemaError("not a stored event", [f"{type(exc).__name__}: {exc}"]) from exc


def columns_from_dicts(objs: Sequence[Mapping[str, Any]]) -> EventColumns:
    """``event_from_dict`` for a batch of stored events, as columns (event id, ts, user,
    item, kind code): the same light checks, without an ``Event`` per record.

    Raises:
        SchemaError: naming the first record with a missing key, an unknown ``kind`` or a
            ``ts`` that is not a number; its index in ``objs`` is the error's ``record``.
    """
    codes = KIND_CODES
    try:
        eids = [d["event_id"] for d in objs]
        users = [d["user_id"] for d in objs]
        items = [d["item_id"] for d in objs]
        kinds = np.fromiter([codes[d["kind"]] for d in objs], np.int8, len(objs))
        ts = np.fromiter([d["ts"] for d in objs], np.float64, len(objs))
        if np.isnan(ts).any():
            raise ValueError("ts is NaN")
    except (KeyError, ValueError, TypeError):
        for i, d in enumerate(objs):  # which one (rare): the first that event_from_dict rejects
            try:
                event_from_dict(d)
                problems = ["ts: NaN"] if isinstance(d.get("ts"), float) and math.isnan(d["ts"]) else []
            except SchemaError as exc:
                problems = exc.problems
            if problems:
                err = SchemaError(f"not a stored event (record {i} of the batch)", problems)
                err.record = i  # type: ignore[attr-defined]  # the records before it are good
                raise err from None
        raise
    return EventColumns(eids, ts, users, items, kinds)
