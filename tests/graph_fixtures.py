"""fixtures/graph/: loading the notification stories, and what a call looks like after one.

Shared by the webhook test of every fixture (tests/test_notification_fixtures.py) and the
property tests that duplicate and reorder them (tests/test_notification_properties.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from bot.call import STATE_ORDER, Call
from bot.calls import CallCollection
from bot.events import CALL_EVENTS
from bot.notifications import (
    CallChanged,
    ContentSharingChanged,
    OperationChanged,
    RosterChanged,
    parse,
)

GRAPH = Path(__file__).parent.parent / "fixtures" / "graph"
FIXTURES = sorted(p for p in GRAPH.glob("*.json") if p.name != "index.json")
INDEX = GRAPH / "index.json"
# Graph's events (the media-side ones, speech, pipeline and media, come from no notification).
EVENTS = tuple(
    e for e in (*CALL_EVENTS, "incoming_call") if e not in ("speech", "pipeline", "media")
)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def items(fixture: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for body in fixture["batches"] for item in body["value"]]


def rings(fixture: dict[str, Any]) -> bool:
    """The fixture's call is an incoming one: its first notification is `created`, incoming."""
    first = items(fixture)[0]
    data = first.get("resourceData")
    return (
        first.get("changeType") == "created"
        and isinstance(data, dict)
        and (data.get("state") == "incoming")
    )


def collection(fixture: dict[str, Any]) -> tuple[CallCollection, Counter[str]]:
    """A call collection ready for the fixture's story, counting the events it fires. Unless
    Graph rings the bot (an incoming `created` adds the call), the bot placed the call: its POST
    answer named it (`created`, when the page shows it), and the operations the page's
    responses returned are tracked. Call within a running event loop."""
    calls = CallCollection()
    fired: Counter[str] = Counter()
    for name in EVENTS:
        calls.events.on(name, lambda *args, _n=name: fired.update([_n]))
    if not rings(fixture):
        call = calls.get_or_add(fixture["call_id"])
        call.delta_roster = bool(fixture.get("delta_roster"))
        if "created" in fixture:  # the POST's answer, applied as bot/app.py applies it
            state = call.apply_resource(fixture["created"], deleted=False)
            if state is not None:
                calls.notify_state(call, state)
        for resource in fixture.get("started_operations", ()):
            call.track_operation(resource)
    return calls, fired


def snapshot(call: Call | None) -> dict[str, Any]:
    """Everything a story can change about a call, comparable across runs."""
    if call is None:
        return {}
    return {
        "state": call.state,
        "resource": call.resource,
        "result_info": call.result_info,
        "participants": {pid: p.resource for pid, p in sorted(call.participants.items())},
        "operations": {k: (op.status, op.resource) for k, op in sorted(call.operations.items())},
        "tones": list(call.tones_seen),
        "content_sharing": dict(sorted(call.content_sharing.items())),
        "lobby": sorted(p.id for p in call.lobby),
        "sharer": call.screen_sharer.id if call.screen_sharer else None,
        "large_gallery": call.large_gallery.id if call.large_gallery else None,
        "media_state": call.media_state,
    }


def ordered(fixture: dict[str, Any]) -> bool:
    """Every notification of the story carries its own order, so any arrival order must
    converge: call states (forward only, by the documented order), tones with a sequenceId,
    operations reaching a final status, and participant entries that each carry a
    rosterSequenceNumber in per-participant or delta form. Whole rosters (membership is
    whoever the latest one lists), content sharing (no order at all) and delta rosters with a
    notification sequenceNumber (a gap is repaired by reading the roster back) are not."""
    ranks: set[int] = set()  # each of the story's states at a rank of its own
    for item in items(fixture):
        try:
            note = parse(item)
        except ValueError:
            continue  # a malformed item is skipped wherever it comes
        if isinstance(note, CallChanged):
            state = "terminated" if note.change_type == "deleted" else note.resource.get("state")
            tone = note.resource.get("toneInfo")
            if isinstance(tone, dict) and isinstance(tone.get("sequenceId"), int):
                continue
            if not (isinstance(state, str) and state in STATE_ORDER):
                return False
            if STATE_ORDER[state] in ranks:
                return False  # a repeat, or the documented way back from a failed transfer
            ranks.add(STATE_ORDER[state])
        elif isinstance(note, OperationChanged):
            if note.resource.get("status") not in ("completed", "failed"):
                return False
        elif isinstance(note, RosterChanged):
            numbered = all(
                isinstance(p.get("rosterSequenceNumber"), int) for p in note.participants
            )
            if not (note.partial and note.sequence_number is None and numbered):
                return False
        elif isinstance(note, ContentSharingChanged):
            return False
    # established after transferring is the documented way back, not a late notification.
    return not (STATE_ORDER["established"] in ranks and ranks & {STATE_ORDER["transferring"]})
