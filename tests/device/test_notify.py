"""The MQTT contract (payloads, topics), presence rules and the store's outbox, without a broker."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from relay import errors
from relay.model import CloseReason, NotifyStatus, Tunnel
from relay.notify import build_notify, device_of_presence_topic, down_topic, parse_notifies, presence_topic
from relay.presence import Presence, State
from relay.store.sqlite import SqliteStore

URI = "wss://relay.example.com/v5/iot/tunnels/3f2c/device-connect"


def test_the_payload_matches_the_seed_example():
    payload = build_notify(tunnel_uri=URI, token="xxxx", expires_in=86400, now=1449922332.0)  # 20151212T121212Z
    assert orjson.loads(payload) == {"services": [{
        "service_id": "$tunnel_manager", "event_type": "tunnel_notify", "event_time": "20151212T121212Z",
        "paras": {"tunnel_uri": URI, "tunnel_access_token": "xxxx", "expires_in": 86400},
    }]}


def test_parse_round_trip_with_custom_info():
    payload = build_notify(tunnel_uri=URI, token="tok", expires_in=60, now=0, custom_info="rack=3")
    [notify] = parse_notifies(payload)
    assert (notify.tunnel_uri, notify.token, notify.expires_in, notify.custom_info) == (URI, "tok", 60, "rack=3")
    assert notify.tunnel_id == "3f2c"
    assert "tok" not in repr(notify)


def test_other_events_are_skipped():
    payload = orjson.dumps({"services": [{"service_id": "$ota", "event_type": "version_query", "paras": {}}]})
    assert parse_notifies(payload) == []


@pytest.mark.parametrize("payload", [
    b"nope", b"[]", b'{"services": 1}',
    orjson.dumps({"services": [{"service_id": "$tunnel_manager", "event_type": "tunnel_notify"}]}),
    orjson.dumps({"services": [{"service_id": "$tunnel_manager", "event_type": "tunnel_notify",
                                "paras": {"tunnel_uri": "http://x", "tunnel_access_token": "t", "expires_in": 1}}]}),
    orjson.dumps({"services": [{"service_id": "$tunnel_manager", "event_type": "tunnel_notify",
                                "paras": {"tunnel_uri": URI, "tunnel_access_token": "t", "expires_in": "1"}}]}),
])
def test_bad_notifies_are_refused(payload):
    with pytest.raises(ValueError):
        parse_notifies(payload)


def test_topics():
    assert down_topic("dev-1") == "$oc/devices/dev-1/sys/events/down"
    assert device_of_presence_topic(presence_topic("dev-1")) == "dev-1"
    assert device_of_presence_topic("$oc/devices/dev-1/sys/events/down") is None


# -- presence ----------------------------------------------------------------------------


def test_known_mode_allows_strangers_and_refuses_the_offline():
    presence = Presence("known")
    presence.require_online("stranger")
    presence.update("d", b"offline", 1_750_000_000)
    with pytest.raises(errors.DeviceOffline) as caught:
        presence.require_online("d")
    assert "offline (since 20250615T" in caught.value.message
    presence.update("d", b"online\n", 1)
    presence.require_online("d")


def test_strict_mode_refuses_strangers():
    presence = Presence("strict")
    with pytest.raises(errors.DeviceOffline):
        presence.require_online("stranger")
    presence.update("d", b"ONLINE", 1)
    presence.require_online("d")


def test_empty_payload_forgets_and_unknown_words_change_nothing():
    presence = Presence("known")
    presence.update("d", b"online", 1)
    assert presence.update("d", b"maybe", 2) is State.ONLINE
    assert presence.update("d", b"", 3) is State.UNKNOWN and len(presence) == 0


def test_a_refresh_forgets_devices_the_broker_no_longer_mentions():
    presence = Presence("known")
    presence.update("a", b"offline", 1)
    presence.update("b", b"online", 1)
    presence.begin_refresh()
    assert presence.state("a") is State.OFFLINE   # still known during the refresh
    presence.update("b", b"online", 2)
    presence.end_refresh()
    assert presence.state("a") is State.UNKNOWN and presence.state("b") is State.ONLINE


# -- the outbox in the SQLite store ----------------------------------------------------


def tunnel(tunnel_id: str = "t1", device_id: str = "d1") -> Tunnel:
    return Tunnel(tunnel_id=tunnel_id, project_id="p", device_id=device_id, create_time=0, expires_at=100,
                  source_token_hash="s", device_token_hash="d")


async def test_outbox_lifecycle(tmp_path):
    store = SqliteStore(str(tmp_path / "r.db"))
    t = tunnel()
    await store.insert(t, 10, notify_token="tok-1")
    assert t.notify_status is NotifyStatus.PENDING
    assert [(e.tunnel_id, e.device_token) for e in await store.pending_notifies(10)] == [("t1", "tok-1")]
    await store.queue_notify("t1", "tok-2")   # a rotation replaces the token
    assert [e.device_token for e in await store.pending_notifies(10)] == ["tok-2"]
    assert not await store.notify_delivered("t1", "tok-1")   # a late ack of the old token changes nothing
    assert (await store.get("t1")).notify_status is NotifyStatus.PENDING
    assert await store.notify_delivered("t1", "tok-2")
    assert (await store.get("t1")).notify_status is NotifyStatus.DELIVERED
    assert await store.pending_notifies(10) == []
    await store.aclose()


async def test_outbox_survives_reopening_and_closing_drops_it(tmp_path):
    path = str(tmp_path / "r.db")
    store = SqliteStore(path)
    await store.insert(tunnel("t1", "d1"), 10, notify_token="a")
    await store.insert(tunnel("t2", "d2"), 10, notify_token="b")
    await store.insert(tunnel("t3", "d3"), 10)
    await store.aclose()
    store = SqliteStore(path)
    assert [e.tunnel_id for e in await store.pending_notifies(10)] == ["t1", "t2"]
    assert (await store.get("t3")).notify_status is None
    closed = await store.close("t1", 5, CloseReason.CLOSED)
    assert closed.notify_status is None
    assert [e.tunnel_id for e in await store.pending_notifies(10)] == ["t2"]
    assert await store.queue_notify("t1", "again") is None   # a closed tunnel gets no notify
    await store.aclose()


async def test_an_older_database_gets_the_new_column(tmp_path):
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tunnels (seq INTEGER PRIMARY KEY AUTOINCREMENT, tunnel_id TEXT NOT NULL UNIQUE,"
               " project_id TEXT NOT NULL, device_id TEXT NOT NULL, status TEXT NOT NULL, create_time REAL NOT NULL,"
               " expires_at REAL NOT NULL, closed_time REAL, close_reason TEXT, description TEXT, custom_info TEXT,"
               " source_token_hash TEXT NOT NULL, device_token_hash TEXT NOT NULL,"
               " source_connected INTEGER NOT NULL DEFAULT 0, source_state_time REAL,"
               " device_connected INTEGER NOT NULL DEFAULT 0, device_state_time REAL)")
    db.execute("INSERT INTO tunnels (tunnel_id, project_id, device_id, status, create_time, expires_at,"
               " source_token_hash, device_token_hash) VALUES ('old', 'p', 'd', 'OPEN', 0, 100, 's', 'd')")
    db.commit()
    db.close()
    store = SqliteStore(path)
    old = await store.get("old")
    assert old is not None and old.notify_status is None
    await store.aclose()


async def test_an_older_outbox_gets_the_delivered_column_and_keeps_its_entries_waiting(tmp_path):
    path = str(tmp_path / "old-outbox.db")
    store = SqliteStore(path)
    await store.insert(tunnel("t1", "d1"), 10)
    await store.aclose()
    db = sqlite3.connect(path)   # the outbox as versions before re-notify made it
    db.execute("DROP TABLE notify_outbox")
    db.execute("CREATE TABLE notify_outbox (tunnel_id TEXT PRIMARY KEY, device_token TEXT NOT NULL)")
    db.execute("INSERT INTO notify_outbox VALUES ('t1', 'tok-old')")
    db.commit()
    db.close()
    store = SqliteStore(path)
    assert [(e.tunnel_id, e.device_token) for e in await store.pending_notifies(10)] == [("t1", "tok-old")]
    assert await store.notify_delivered("t1", "tok-old")
    assert await store.pending_notifies(10) == []
    assert await store.renotify("d1") == ["t1"]
    await store.aclose()
