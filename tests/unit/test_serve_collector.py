"""The collector settings a serving process runs with."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway.serve import YOUNG_GC_THRESHOLD, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    yield
    gc.unfreeze()
    if frozen:
        gc.freeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_collector")
def test_serving_collects_young_objects_less_often_and_keeps_the_older_generations() -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector()
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 10, 10)


@pytest.mark.usefixtures("restored_collector")
def test_the_start_up_heap_is_frozen_out_of_collections() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_collector()
    assert gc.get_freeze_count() > 0
