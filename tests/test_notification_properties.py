"""Graph posts a notification at least once and promises no order: every story in
fixtures/graph/ ends in the same state when its notifications are re-delivered, and every story
whose notifications carry their own order (tests/graph_fixtures.py, `ordered`) ends in the same
state in any arrival order, with duplicates anywhere."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.graph_fixtures import FIXTURES, collection, items, load, ordered, snapshot

ORDERED = [p for p in FIXTURES if ordered(load(p))]
EXAMPLES = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def final_state(fixture: dict[str, Any], sequence: list[dict[str, Any]]) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        calls, _ = collection(fixture)
        for item in sequence:
            calls.apply(item)
        await calls.idle()
        assert calls.failed == 0
        state = snapshot(calls.calls.get(fixture["call_id"]))
        await calls.close()
        return state

    return asyncio.run(run())


def test_many_stories_carry_their_own_order() -> None:
    """The permutation property is not vacuous: call state, operation, tone and numbered
    per-participant stories are ordered; whole rosters and content sharing are not."""
    assert len(ORDERED) >= 25, [p.stem for p in ORDERED]
    assert len(ORDERED) < len(FIXTURES)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
@EXAMPLES
@given(data=st.data())
def test_redelivery_changes_nothing(path: Path, data: st.DataObject) -> None:
    """Any notification delivered again right after itself (a retried item), or any batch
    posted twice in a row (a retried POST), leaves the state of one delivery."""
    fixture = load(path)
    once = final_state(fixture, items(fixture))
    batches = [body["value"] for body in fixture["batches"]]
    again: list[dict[str, Any]] = []
    for batch in batches:
        for item in batch:
            again.extend([item] * data.draw(st.integers(1, 3), label="copies"))
        if data.draw(st.booleans(), label="batch retried"):
            again.extend(batch)
    assert final_state(fixture, again) == once


@pytest.mark.parametrize("path", ORDERED, ids=[p.stem for p in ORDERED])
@EXAMPLES
@given(data=st.data())
def test_ordered_stories_converge_in_any_order(path: Path, data: st.DataObject) -> None:
    fixture = load(path)
    once = final_state(fixture, items(fixture))
    shuffled = data.draw(st.permutations(items(fixture)), label="arrival order")
    extra = data.draw(st.lists(st.sampled_from(items(fixture)), max_size=4), label="repeats")
    arrival = list(shuffled)
    for item in extra:
        arrival.insert(data.draw(st.integers(0, len(arrival)), label="at"), item)
    assert final_state(fixture, arrival) == once
