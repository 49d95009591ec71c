"""parse_event: every field validated, every problem named; JSON round trip."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedrank.data.events import event_from_dict, event_to_dict, parse_event
from feedrank.errors import SchemaError
from feedrank.types import Event, EventKind

NOW = 1_714_000_000.0


def ok(**kw):
    base = {"event_id": "e1", "ts": NOW - 10, "user_id": "u1", "item_id": "n1", "kind": "click"}
    base.update(kw)
    return base


def problems_of(obj) -> list[str]:
    with pytest.raises(SchemaError) as ei:
        parse_event(obj, NOW)
    return ei.value.problems


def fields_named(problems: list[str]) -> set[str]:
    return {p.split(":", 1)[0] for p in problems}


def test_minimal_click() -> None:
    ev = parse_event(ok(), NOW)
    assert ev == Event("e1", NOW - 10, "u1", "n1", EventKind.CLICK)


def test_full_dwell_with_iso_ts() -> None:
    ev = parse_event(
        ok(kind="dwell", ts="2024-04-24T20:00:00Z", dwell_ms=1234.5, position=3, request_id="r1", propensity=0.25),
        NOW,
    )
    assert ev.kind is EventKind.DWELL and ev.dwell_ms == 1234.5 and ev.position == 3
    assert ev.ts == 1_713_988_800.0
    # naive ISO times are UTC
    assert parse_event(ok(ts="2024-04-24T20:00:00"), NOW).ts == 1_713_988_800.0


def test_every_bad_field_is_named_at_once() -> None:
    bad = {
        "event_id": "",
        "ts": float("nan"),
        "user_id": 7,
        "item_id": "   ",
        "kind": "purchase",
        "position": -1,
        "request_id": 5,
        "propensity": 0.0,
        "dwell_ms": float("inf"),
        "colour": "red",
    }
    names = fields_named(problems_of(bad))
    assert names == {
        "event_id", "ts", "user_id", "item_id", "kind", "position", "request_id", "propensity", "dwell_ms", "colour"
    }


@pytest.mark.parametrize(
    "field,value",
    [
        ("event_id", "x" * 129),
        ("event_id", None),
        ("ts", NOW + 2 * 86_400),
        ("ts", NOW * 1000),  # milliseconds by mistake
        ("ts", 100.0),  # before 1990
        ("ts", "yesterday"),
        ("ts", True),
        ("ts", float("-inf")),
        ("position", 1.0),
        ("position", True),
        ("propensity", 1.5),
        ("propensity", float("nan")),
        ("propensity", "0.5"),
        ("dwell_ms", -1),
        ("dwell_ms", float("nan")),
    ],
)
def test_single_bad_field(field: str, value) -> None:
    assert fields_named(problems_of(ok(**{field: value}))) == {field}


def test_missing_required_fields_and_dwell_needs_dwell_ms() -> None:
    assert fields_named(problems_of({})) == {"event_id", "ts", "user_id", "item_id", "kind"}
    assert fields_named(problems_of(ok(kind="dwell"))) == {"dwell_ms"}
    assert fields_named(problems_of(ok(kind="dwell", dwell_ms=None))) == {"dwell_ms"}


def test_not_an_object() -> None:
    assert problems_of([1, 2]) == ["event: expected a JSON object, got list"]


def test_boundaries_accepted() -> None:
    assert parse_event(ok(ts=NOW + 86_400, propensity=1.0, position=0, dwell_ms=0), NOW).propensity == 1.0
    assert parse_event(ok(ts=int(NOW)), NOW).ts == NOW
    assert parse_event(ok(event_id="x" * 128), NOW).event_id == "x" * 128


ids = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
finite_pos = st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def events(draw) -> Event:
    kind = draw(st.sampled_from(list(EventKind)))
    dwell = draw(finite_pos) if kind is EventKind.DWELL else draw(st.none() | finite_pos)
    return Event(
        event_id=draw(ids),
        ts=draw(st.floats(min_value=631_152_000.0, max_value=NOW + 86_400)),
        user_id=draw(ids),
        item_id=draw(ids),
        kind=kind,
        position=draw(st.none() | st.integers(min_value=0, max_value=10_000)),
        request_id=draw(st.none() | ids),
        propensity=draw(st.none() | st.floats(min_value=1e-9, max_value=1.0)),
        dwell_ms=dwell,
    )


@settings(max_examples=200, deadline=None)
@given(events())
def test_round_trip_through_json(ev: Event) -> None:
    d = orjson.loads(orjson.dumps(event_to_dict(ev)))
    assert parse_event(d, NOW) == ev
    assert event_from_dict(d) == ev
    assert math.isfinite(parse_event(d, NOW).ts)
