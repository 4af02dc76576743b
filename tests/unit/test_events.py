"""The event contract: valid events parse, every kind of bad input is refused with its field."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interest_stream.core.errors import InvalidEvent
from interest_stream.core.events import (
    MIN_TS_MS,
    Event,
    dlq_record,
    parse_event,
    parse_ts,
    topic_event_type,
)

NOW = 1_800_000_000_000
GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "view", "ts": 1_511_544_070_000}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_event_round_trips() -> None:
    ev = parse_event(enc({**GOOD, "event_id": "e1"}), key=b"u1", now_ms=NOW)
    assert ev == Event("u1", "i1", "view", 1_511_544_070_000, "e1")
    assert parse_event(ev.to_json(), now_ms=NOW) == ev


@pytest.mark.parametrize(
    ("alias", "canonical"), [("pv", "view"), ("buy", "purchase"), ("CART", "cart")]
)
def test_aliases(alias: str, canonical: str) -> None:
    assert parse_event(enc({**GOOD, "event_type": alias}), now_ms=NOW).event_type == canonical


def test_type_implied_by_topic_and_namespaced_topics() -> None:
    raw = {k: v for k, v in GOOD.items() if k != "event_type"}
    assert parse_event(enc(raw), topic="events.cart", now_ms=NOW).event_type == "cart"
    assert parse_event(enc(raw), topic="shop.events.fav", now_ms=NOW).event_type == "fav"
    assert topic_event_type("events.dlq") is None
    with pytest.raises(InvalidEvent) as err:
        parse_event(enc(raw), topic="clicks", now_ms=NOW)
    assert err.value.field == "event_type"
    with pytest.raises(InvalidEvent, match="contradicts"):
        parse_event(enc({**GOOD, "event_type": "purchase"}), topic="events.view", now_ms=NOW)


def test_iso_timestamps() -> None:
    ev = parse_event(enc({**GOOD, "ts": "2017-11-24T16:00:17Z"}), now_ms=NOW)
    assert ev.ts == 1_511_539_217_000
    naive = parse_event(enc({**GOOD, "ts": "2017-11-24T16:00:17"}), now_ms=NOW)
    assert naive.ts == ev.ts
    offset = parse_event(enc({**GOOD, "ts": "2017-11-25T00:00:17+08:00"}), now_ms=NOW)
    assert offset.ts == ev.ts


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe\x00bad", None, "not UTF-8"),
        (b"[1,2]", None, "JSON object"),
        (b"null", None, "JSON object"),
        (enc({**GOOD, "user_id": 42}), "user_id", "must be a string"),
        (enc({**GOOD, "user_id": ""}), "user_id", "empty"),
        (enc({**GOOD, "user_id": "x" * 129}), "user_id", "limit is 128"),
        (enc({**GOOD, "user_id": "a\x00b"}), "user_id", "control"),
        (b'{"user_id":"\\ud800","item_id":"i","event_type":"view","ts":1511544070000}',
         "user_id", "surrogate"),
        (enc({k: v for k, v in GOOD.items() if k != "item_id"}), "item_id", "missing"),
        (enc({**GOOD, "event_type": "hover"}), "event_type", "unknown event_type"),
        (enc({**GOOD, "event_type": 3}), "event_type", "must be a string"),
        (enc({**GOOD, "ts": True}), "ts", "boolean"),
        (enc({**GOOD, "ts": 1_511_544_070}), "ts", "epoch seconds"),
        (enc({**GOOD, "ts": -5}), "ts", "negative"),
        (enc({**GOOD, "ts": 1.5e12 + 0.5}), "ts", "whole"),
        (enc({**GOOD, "ts": NOW + 2 * 86_400_000}), "ts", "future"),
        (enc({**GOOD, "ts": "yesterday"}), "ts", "ISO-8601"),
        (enc({**GOOD, "ts": [1]}), "ts", "got list"),
        (b'{"user_id":"u1","item_id":"i1","event_type":"view","ts":NaN}', None, "NaN"),
        (enc({**GOOD, "event_id": 7}), "event_id", "must be a string"),
    ],
)  # fmt: skip
def test_invalid_events_name_field_and_reason(
    payload: bytes, field: str | None, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event(payload, now_ms=NOW)
    assert err.value.field == field
    assert reason in str(err.value)


def test_key_must_match_user() -> None:
    with pytest.raises(InvalidEvent) as err:
        parse_event(enc(GOOD), key=b"someone-else", now_ms=NOW)
    assert err.value.field == "key"


def test_size_limit_checked_before_decoding() -> None:
    big = enc({**GOOD, "item_id": "x" * 2_000_000})
    with pytest.raises(InvalidEvent, match="exceeds the limit"):
        parse_event(big, max_bytes=65_536, now_ms=NOW)
    with pytest.raises(InvalidEvent, match="tombstone"):
        parse_event(None)


def test_parse_ts_bounds() -> None:
    assert parse_ts(MIN_TS_MS, now_ms=NOW) == MIN_TS_MS
    assert parse_ts(float(MIN_TS_MS), now_ms=NOW) == MIN_TS_MS
    with pytest.raises(InvalidEvent):
        parse_ts(float("inf"), now_ms=NOW)


def test_dlq_record_text_binary_and_truncation() -> None:
    rec = dlq_record("bad", "ts", topic="events.view", partition=2, offset=7, raw=b'{"a":1}')
    assert rec == {
        "error": "bad",
        "field": "ts",
        "source": {"topic": "events.view", "partition": 2, "offset": 7},
        "raw": '{"a":1}',
        "raw_encoding": "utf-8",
    }
    binary = dlq_record("x", None, topic="t", partition=0, offset=0, raw=b"\xff\x00")
    assert binary["raw_encoding"] == "base64"
    assert base64.b64decode(binary["raw"]) == b"\xff\x00"
    big = "é" * 200_000  # 400 kB of 2-byte characters, cut mid-character
    cut = dlq_record(
        "x", None, topic="t", partition=0, offset=1, raw=big.encode(), raw_max_bytes=1001
    )
    assert cut["raw_truncated"] is True and cut["raw_bytes"] == 400_000
    assert cut["raw_encoding"] == "utf-8" and cut["raw"] == "é" * 500
    json.dumps(cut)  # always serialisable


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_errors(raw: bytes) -> None:
    try:
        ev = parse_event(raw, now_ms=NOW)
    except InvalidEvent as exc:
        rec = dlq_record(exc.message, exc.field, topic="t", partition=0, offset=0, raw=raw)
        assert rec["error"]
        json.dumps(rec)
    else:
        assert isinstance(ev, Event)


@given(
    st.dictionaries(
        st.sampled_from(["user_id", "item_id", "event_type", "ts", "event_id", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=200)),
    )
)
def test_arbitrary_objects_are_valid_or_refused(obj: dict[str, object]) -> None:
    try:
        raw = json.dumps(obj).encode()
    except ValueError:
        return
    try:
        ev = parse_event(raw, now_ms=NOW)
    except InvalidEvent as exc:
        assert exc.message
    else:
        assert 0 < len(ev.user_id) <= 128 and ev.ts >= MIN_TS_MS
