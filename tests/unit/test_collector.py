"""Cache entries leave the cyclic collector's walks once enough were added: a full
collection then walks only what was added since, however much a process caches."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from cxmesh_server.runtime.collector import LongLived


class Entry:
    """A cache entry as the collector sees one: an object it tracks."""


@pytest.fixture
def long_lived() -> Iterator[LongLived]:
    collector = LongLived(freeze_after=100)
    gc.collect()
    collector.install()
    yield collector
    collector.uninstall()
    gc.unfreeze()


def _walked(entries: list[Entry]) -> int:
    """How many of the entries a full collection would walk."""
    tracked = {id(o) for o in gc.get_objects()}
    return sum(id(e) in tracked for e in entries)


def test_entries_added_past_the_threshold_are_frozen_at_the_next_young_collection(
    long_lived: LongLived,
) -> None:
    frozen_before = gc.get_freeze_count()
    entries = [Entry() for _ in range(150)]
    long_lived.added(len(entries))
    assert _walked(entries) == 150  # until a collection ends

    gc.collect(1)

    assert _walked(entries) == 0
    assert gc.get_freeze_count() >= frozen_before + 150


def test_fewer_entries_than_the_threshold_stay_in_sight(long_lived: LongLived) -> None:
    entries = [Entry() for _ in range(99)]
    long_lived.added(len(entries))
    gc.collect(1)
    assert _walked(entries) == 99


def test_a_collection_of_the_youngest_generation_alone_freezes_nothing(
    long_lived: LongLived,
) -> None:
    entries = [Entry() for _ in range(150)]
    long_lived.added(len(entries))
    gc.collect(0)
    assert _walked(entries) == 150
    gc.collect(1)
    assert _walked(entries) == 0


def test_the_count_starts_again_after_a_freeze(long_lived: LongLived) -> None:
    long_lived.added(150)
    gc.collect(1)
    later = [Entry() for _ in range(50)]
    long_lived.added(len(later))
    gc.collect(1)
    assert _walked(later) == 50


def test_a_frozen_entry_evicted_is_freed_as_any_other(long_lived: LongLived) -> None:
    entries = [Entry() for _ in range(150)]
    long_lived.added(len(entries))
    gc.collect(1)
    frozen = gc.get_freeze_count()
    del entries[:]
    assert gc.get_freeze_count() <= frozen - 150


def test_every_collection_is_timed_by_generation(long_lived: LongLived) -> None:
    def collections(generation: str) -> float:
        sample = REGISTRY.get_sample_value(
            "cxmesh_gc_pause_seconds_count", {"generation": generation}
        )
        return sample or 0.0

    before = collections("2")
    gc.collect()
    assert collections("2") == before + 1
