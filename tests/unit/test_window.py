"""Unit tests of streams.window.BehaviorWindow (no network)."""

from __future__ import annotations

import math
import random
import zlib

import pytest

from interest_stream.core.errors import InterestStreamError
from interest_stream.core.events import EVENT_TYPES, Event, Interaction
from interest_stream.streams.window import (
    BehaviorWindow,
    StateCodecError,
    WindowConfig,
    WindowError,
    event_id_digest,
)

T0 = 1_511_000_000_000
MIN = 60_000
HOUR = 3_600_000


def ev(
    ts: int, item: str = "i", etype: str = "view", user: str = "u1", eid: str | None = None
) -> Event:
    return Event(user, item, etype, ts, eid)


def test_events_are_kept_in_event_time_order_and_ties_keep_arrival_order() -> None:
    w = BehaviorWindow("u1")
    arrivals = [(T0 + 5, "a"), (T0 + 1, "b"), (T0 + 5, "c"), (T0 + 3, "d"), (T0 + 1, "e")]
    for ts, item in arrivals:
        assert w.apply(ev(ts, item))
    assert w.long() == [
        Interaction("b", "view", T0 + 1),
        Interaction("e", "view", T0 + 1),
        Interaction("d", "view", T0 + 3),
        Interaction("a", "view", T0 + 5),
        Interaction("c", "view", T0 + 5),
    ]
    assert w.version == 5
    assert w.event_time == T0 + 5


def test_history_is_capped_by_dropping_the_oldest_event_time() -> None:
    w = BehaviorWindow("u1", WindowConfig(long_history_events=3))
    for i in range(5):
        w.apply(ev(T0 + 10 * i, f"i{i}"))
    assert [x.item_id for x in w.long()] == ["i2", "i3", "i4"]
    # a late event older than everything kept is counted but falls out at once
    assert w.apply(ev(T0 - 1, "late", "cart"))
    assert [x.item_id for x in w.long()] == ["i2", "i3", "i4"]
    assert w.type_counts["cart"] == 1
    assert w.version == 6
    # a late event inside the kept span pushes out the oldest
    w.apply(ev(T0 + 25, "mid"))
    assert [x.item_id for x in w.long()] == ["mid", "i3", "i4"]
    assert len(w) == 3


def test_short_window_takes_latest_events_within_minutes_of_the_newest() -> None:
    cfg = WindowConfig(short_window_events=3, short_window_minutes=10)
    w = BehaviorWindow("u1", cfg)
    for i, minute in enumerate([0, 1, 15, 16, 20, 26]):
        w.apply(ev(T0 + minute * MIN, f"i{i}"))
    # newest at 26 min: window [16, 26] min holds i3, i4, i5 (3 events, cap 3)
    assert [x.item_id for x in w.short()] == ["i3", "i4", "i5"]
    w.apply(ev(T0 + 40 * MIN, "i6"))
    # newest at 40: only events since 30 min -> just i6
    assert [x.item_id for x in w.short()] == ["i6"]
    # the count cap applies when more events are inside the span
    for k in range(5):
        w.apply(ev(T0 + 41 * MIN + k, f"n{k}"))
    assert [x.item_id for x in w.short()] == ["n2", "n3", "n4"]
    assert BehaviorWindow("u2").short() == []
    # a checkpoint's (events, minutes) replaces the configured pair
    assert [x.item_id for x in w.short((4, 60.0))] == ["n1", "n2", "n3", "n4"]
    assert [x.item_id for x in w.short((50, 15.0))] == ["i6", "n0", "n1", "n2", "n3", "n4"]


def test_exact_counts_and_decayed_counts_in_event_time() -> None:
    w = BehaviorWindow("u1", WindowConfig(long_half_life_hours=1))
    w.apply(ev(T0, etype="view"))
    w.apply(ev(T0 + HOUR, etype="view"))
    w.apply(ev(T0 + 2 * HOUR, etype="purchase"))
    assert w.type_counts == {"view": 2, "click": 0, "cart": 0, "fav": 0, "purchase": 1}
    d = w.decayed_counts()
    assert d["view"] == pytest.approx(0.25 + 0.5)
    assert d["purchase"] == pytest.approx(1.0)
    # a late event adds its already-decayed weight: same as if it had come in order
    w.apply(ev(T0 + HOUR, etype="purchase"))
    assert w.decayed_counts()["purchase"] == pytest.approx(1.5)
    assert w.event_time == T0 + 2 * HOUR
    # decay forward to a later time
    later = w.decayed_counts(T0 + 3 * HOUR)
    assert later["purchase"] == pytest.approx(0.75)
    assert later["view"] == pytest.approx(0.375)


def test_decayed_counts_do_not_depend_on_arrival_order() -> None:
    rng = random.Random(7)
    events = [
        ev(T0 + rng.randrange(0, 200 * HOUR), etype=rng.choice(EVENT_TYPES)) for _ in range(300)
    ]
    a, b = BehaviorWindow("u1"), BehaviorWindow("u1")
    for e in events:
        a.apply(e)
    for e in sorted(events, key=lambda e: e.ts):
        b.apply(e)
    assert a.type_counts == b.type_counts
    for t in EVENT_TYPES:
        assert math.isclose(a.decayed[t], b.decayed[t], rel_tol=1e-9, abs_tol=1e-12)
    assert a.long() == b.long()


def test_duplicate_by_source_offset_is_skipped_and_counts_stay_exact() -> None:
    w = BehaviorWindow("u1")
    assert w.apply(ev(T0, "a"), "events.view", 0, 10)
    assert w.apply(ev(T0 + 1, "b"), "events.view", 0, 11)
    # redelivery after a crash: same or older offsets on the same topic-partition
    assert not w.apply(ev(T0, "a"), "events.view", 0, 10)
    assert not w.apply(ev(T0 + 1, "b"), "events.view", 0, 11)
    assert not w.apply(ev(T0 + 9, "x"), "events.view", 0, 3)
    # the same offset on another topic is a different message
    assert w.apply(ev(T0 + 2, "c", "click"), "events.click", 0, 10)
    assert w.version == 3
    assert w.type_counts["view"] == 2 and w.type_counts["click"] == 1
    assert w.offsets == {"events.view:0": 11, "events.click:0": 10}


def test_duplicate_by_event_id_is_skipped_and_the_memory_is_bounded() -> None:
    w = BehaviorWindow("u1", WindowConfig(dedupe_ids=2))
    assert w.apply(ev(T0, "a", eid="e1"), "events.view", 0, 1)
    assert not w.apply(ev(T0, "a", eid="e1"), "events.view", 0, 2)  # producer retry
    assert w.offsets["events.view:0"] == 2  # the skipped message still advanced the mark
    assert w.apply(ev(T0 + 1, "b", eid="e2"))
    assert w.apply(ev(T0 + 2, "c", eid="e3"))
    assert w.recent_ids == [event_id_digest("e2"), event_id_digest("e3")]
    # e1 was forgotten (only 2 ids remembered), so it counts again
    assert w.apply(ev(T0 + 3, "a", eid="e1"))
    assert not w.apply(ev(T0 + 3, "c", eid="e3"))
    assert w.version == 4
    assert w.is_duplicate(ev(T0, eid="e1"))
    assert not w.is_duplicate(ev(T0, eid="e9"))
    # dedupe_ids=0 disables id dedupe
    w0 = BehaviorWindow("u1", WindowConfig(dedupe_ids=0))
    assert w0.apply(ev(T0, eid="e1")) and w0.apply(ev(T0, eid="e1"))
    assert w0.recent_ids == []


def test_event_of_another_user_is_refused() -> None:
    w = BehaviorWindow("u1")
    with pytest.raises(WindowError):
        w.apply(ev(T0, user="u2"))
    assert w.version == 0


def _filled(n: int = 250, ids: bool = True) -> BehaviorWindow:
    rng = random.Random(3)
    w = BehaviorWindow("用户-1", WindowConfig(long_history_events=200, dedupe_ids=64))
    for i in range(n):
        w.apply(
            ev(
                T0 + rng.randrange(0, 72 * HOUR),
                f"item-{rng.randrange(0, 5000)}",
                rng.choice(EVENT_TYPES),
                user="用户-1",
                eid=f"evt-{i}" if ids else None,
            ),
            rng.choice(["events.view", "events.click"]),
            rng.randrange(0, 4),
            i,
        )
    return w


def test_codec_round_trip_keeps_everything() -> None:
    w = _filled()
    data = w.to_bytes()
    back = BehaviorWindow.from_bytes(data, w.config)
    assert back.user_id == w.user_id
    assert back.long() == w.long()
    assert back.short() == w.short()
    assert back.type_counts == w.type_counts
    assert back.decayed == w.decayed
    assert back.decay_ref == w.decay_ref
    assert (back.version, back.event_time) == (w.version, w.event_time)
    assert back.offsets == w.offsets
    assert back.recent_ids == w.recent_ids
    assert back.to_dict() == w.to_dict()
    assert back.to_bytes() == data
    # the decoded window keeps working like the original
    e = ev(T0 + 100 * HOUR, "new", user="用户-1", eid="evt-new")
    assert back.apply(e, "events.view", 0, 10_000) and w.apply(e, "events.view", 0, 10_000)
    assert back.to_bytes() == w.to_bytes()
    empty = BehaviorWindow("u0")
    assert BehaviorWindow.from_bytes(empty.to_bytes()).to_dict() == empty.to_dict()


def test_codec_is_compact() -> None:
    w = _filled(ids=False)
    assert len(w) == 200
    assert len(w.to_bytes()) < 2500


def test_decoding_trims_to_a_smaller_configured_history() -> None:
    w = _filled()
    cfg = WindowConfig(long_history_events=10, dedupe_ids=4)
    small = BehaviorWindow.from_bytes(w.to_bytes(), cfg)
    assert small.long() == w.long()[-10:]
    assert small.recent_ids == w.recent_ids[-4:]
    assert small.version == w.version


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"BW",
        b"XX\x01" + zlib.compress(b"{}"),
        b"BW\x09" + zlib.compress(b"{}"),
        b"BW\x01not zlib at all",
        b"BW\x01" + zlib.compress(b"[1,2]"),
        b"BW\x01" + zlib.compress(b"{}"),
        b"BW\x01" + zlib.compress(b"\xff\xfe"),
        b"BW\x01"
        + zlib.compress(
            b'{"u":"u","n":1,"e":1,"c":[1,0,0,0,0],"d":[1,0,0,0,0],'
            b'"r":1,"o":{},"i":["a"],"y":"7","t":[1]}'
        ),
        b"BW\x01"
        + zlib.compress(
            b'{"u":"u","n":1,"e":1,"c":[1,0,0,0,0],"d":[1,0,0,0,0],'
            b'"r":1,"o":{},"i":["a","b"],"y":"0","t":[1]}'
        ),
        b"BW\x01"
        + zlib.compress(
            b'{"u":"u","n":1,"e":1,"c":[1,0,0,0,0],"d":[1,0,0,0,0],'
            b'"r":1,"o":{},"i":["a","b"],"y":"00","t":[5,-1]}'
        ),
        b"BW\x01"
        + zlib.compress(
            b'{"u":"u","n":-1,"e":1,"c":[1,0,0,0,0],"d":[1,0,0,0,0],'
            b'"r":1,"o":{},"i":[],"y":"","t":[]}'
        ),
        b"BW\x01"
        + zlib.compress(
            b'{"u":"u","n":1,"e":1,"c":[1,0,0,0,0],"d":[1,0,0,0,0],'
            b'"r":1,"o":{},"i":[],"y":"","t":[],"h":"!!"}'
        ),
    ],
)
def test_corrupt_bytes_raise_state_codec_error(data: bytes) -> None:
    with pytest.raises(StateCodecError) as info:
        BehaviorWindow.from_bytes(data)
    assert isinstance(info.value, InterestStreamError)


def test_truncated_and_flipped_bytes_never_decode_silently_wrong() -> None:
    data = _filled().to_bytes()
    with pytest.raises(StateCodecError):
        BehaviorWindow.from_bytes(data[: len(data) // 2])
    rng = random.Random(11)
    for _ in range(200):
        buf = bytearray(data)
        pos = rng.randrange(3, len(buf))
        buf[pos] ^= 1 << rng.randrange(8)
        try:
            back = BehaviorWindow.from_bytes(bytes(buf))
        except StateCodecError:
            continue
        # zlib's adler32 catches almost every flip; if one decodes it must be well-formed
        assert len(back.items) == len(back.types) == len(back.times)


def test_to_dict_is_a_json_view() -> None:
    import json

    w = BehaviorWindow("u1")
    w.apply(ev(T0, "a", "cart"), "events.cart", 2, 5)
    d = json.loads(json.dumps(w.to_dict()))
    assert d["user_id"] == "u1"
    assert d["version"] == 1
    assert d["type_counts"]["cart"] == 1
    assert d["long"] == [{"item_id": "a", "event_type": "cart", "ts": T0}]
    assert d["short"] == d["long"]
    assert d["offsets"] == {"events.cart:2": 5}


def test_config_from_settings_and_validation() -> None:
    from interest_stream.core.settings import Settings

    s = Settings(
        long_history_events=7,
        short_window_events=3,
        short_window_minutes=5.0,
        long_half_life_hours=2.0,
        dedupe_ids=9,
    )
    cfg = WindowConfig.from_settings(s)
    assert cfg == WindowConfig(7, 3, 5.0, 2.0, 9)
    with pytest.raises(WindowError):
        WindowConfig(long_history_events=0)
