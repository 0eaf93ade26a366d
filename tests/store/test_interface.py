"""The store interface is split by concern (relay/store/base.py): each method has one home,
both stores implement every concern, and a store that misses a method cannot be made.
No database is opened here."""

from __future__ import annotations

import inspect

import pytest

from relay.auditlog import AuditStore
from relay.cluster import ConnectStates
from relay.notifier import NotifierStore
from relay.store.base import AuditTrail, NotifyOutbox, SessionRecordings, Tunnels, TunnelStore
from relay.store.redis import RedisStore
from relay.store.sqlite import SqliteStore

CONCERNS = (Tunnels, NotifyOutbox, AuditTrail, SessionRecordings)


def declared(protocol: type) -> set[str]:
    """The methods a protocol itself declares (not the ones it inherits)."""
    return {name for name, value in vars(protocol).items() if getattr(value, "__isabstractmethod__", False)}


def test_every_method_of_the_store_has_one_concern():
    homes: dict[str, list[str]] = {}
    for concern in CONCERNS:
        for name in declared(concern):
            homes.setdefault(name, []).append(concern.__name__)
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}
    # the whole store is the concerns and its own close, nothing else
    assert TunnelStore.__abstractmethods__ == frozenset(homes) | {"aclose"}
    assert declared(TunnelStore) == {"aclose"}


def test_the_concerns_are_small():
    assert {concern.__name__: len(declared(concern)) for concern in CONCERNS} == {
        "Tunnels": 12, "NotifyOutbox": 4, "AuditTrail": 3, "SessionRecordings": 4}


@pytest.mark.parametrize("store", [SqliteStore, RedisStore])
def test_both_stores_implement_every_concern(store):
    for concern in (*CONCERNS, TunnelStore):
        assert concern in store.__mro__
    assert not inspect.isabstract(store)


def test_a_store_that_misses_a_method_cannot_be_made():
    missing = "purge_recordings"
    namespace = {name: getattr(SqliteStore, name) for name in TunnelStore.__abstractmethods__ if name != missing}
    partial = type("Partial", (TunnelStore,), namespace)
    with pytest.raises(TypeError, match=missing):
        partial()


def test_the_callers_needs_are_concerns_of_the_store():
    """The audit log writes to the audit trail and the recordings, the notifier works the
    outbox and reads tunnels, the cluster records connect states: all met by TunnelStore."""
    assert set(AuditStore.__mro__) >= {AuditTrail, SessionRecordings} and Tunnels not in AuditStore.__mro__
    assert set(NotifierStore.__mro__) >= {NotifyOutbox, Tunnels} and AuditTrail not in NotifierStore.__mro__
    needed = inspect.signature(ConnectStates.set_connect_state)
    assert inspect.signature(Tunnels.set_connect_state) == needed
