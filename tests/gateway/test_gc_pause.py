"""`gc_paused`: no garbage collection inside, and the collector as it was afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.gc_pause import gc_paused


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was_enabled = gc.isenabled()
    yield
    if was_enabled:
        gc.enable()


def test_collection_is_off_inside_and_on_again_after() -> None:
    gc.enable()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collection_off_before_stays_off() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_collection_is_on_again_after_an_error_and_nested_pauses() -> None:
    gc.enable()

    @gc_paused()
    def build() -> None:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause leaves the outer one paused
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        build()
    assert gc.isenabled()
