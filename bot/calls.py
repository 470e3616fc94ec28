"""Call state kept current from notifications (graph-comms.md sections 1.4-1.6)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Forward order of call states. "establishing" and "established" may arrive out of order
# (Graph docs), so a notification never moves a call backwards along this order.
STATE_ORDER = {
    "incoming": 0,
    "establishing": 1,
    "ringing": 1,
    "established": 2,
    "hold": 2,
    "transferring": 3,
    "transferAccepted": 4,
    "redirecting": 4,
    "terminating": 5,
    "terminated": 6,
}
_CALL_URL = re.compile(r"^/(?:communications|app)/calls/([^/]+)(/participants)?$")


class CallEndedError(Exception):
    """The call ended before it reached the state being waited for."""

    def __init__(self, call: Call, state: str) -> None:
        super().__init__(f"call {call.id} ended before {state}: resultInfo {call.result_info}")
        self.call = call


@dataclass
class Call:
    id: str
    state: str = "establishing"
    states_seen: list[str] = field(default_factory=list)
    result_info: dict[str, Any] | None = None
    participants: dict[str, dict[str, Any]] = field(default_factory=dict)
    media_session_id: str | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def apply_state(self, state: str) -> None:
        if state not in STATE_ORDER:
            logger.info("Call(%s) ignores unknown state %r", self.id, state)
            return
        if STATE_ORDER[state] < STATE_ORDER.get(self.state, 0):
            logger.info("Call(%s) ignores stale %s after %s", self.id, state, self.state)
            return
        if not self.states_seen or self.states_seen[-1] != state:
            self.states_seen.append(state)
        self.state = state
        self._changed.set()

    async def wait_for(self, state: str, within_seconds: float) -> None:
        """Wait until the call reaches `state` or a later one.

        Raises TimeoutError, or CallEndedError if it terminated without passing `state`.
        """
        async with asyncio.timeout(within_seconds):
            while STATE_ORDER.get(self.state, 0) < STATE_ORDER[state]:
                self._changed.clear()
                await self._changed.wait()
        if state not in self.states_seen and self.state == "terminated" != state:
            raise CallEndedError(self, state)

    def msi_to_participant(self) -> dict[int, str]:
        """Audio MSIs (roster mediaStreams.sourceId) to participant ids."""
        out: dict[int, str] = {}
        for pid, participant in self.participants.items():
            for stream in participant.get("mediaStreams") or []:
                if stream.get("mediaType") == "audio" and str(stream.get("sourceId", "")).isdigit():
                    out[int(stream["sourceId"])] = pid
        return out


class CallRegistry:
    def __init__(self, on_terminated: Callable[[Call], None] | None = None) -> None:
        self.calls: dict[str, Call] = {}
        self.ignored = 0
        self._on_terminated = on_terminated

    def get_or_add(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            # Notifications can arrive before the POST that created the call has returned.
            call = self.calls[call_id] = Call(call_id)
        return call

    def apply(self, item: Any) -> None:
        """Apply one commsNotification. Malformed items are counted and skipped."""
        if not isinstance(item, dict):
            self.ignored += 1
            return
        url = item.get("resourceUrl") or item.get("resource") or ""
        match = _CALL_URL.match(str(url))
        data = item.get("resourceData")
        if match is None:
            self.ignored += 1
            return
        call = self.get_or_add(match.group(1))
        if match.group(2):  # roster: an array of participants
            for participant in data if isinstance(data, list) else []:
                if isinstance(participant, dict) and isinstance(participant.get("id"), str):
                    call.participants[participant["id"]] = participant
            return
        if not isinstance(data, dict):
            self.ignored += 1
            return
        was_terminated = call.state == "terminated"
        if item.get("changeType") == "deleted":
            call.result_info = data.get("resultInfo")
            call.apply_state("terminated")
        elif isinstance(data.get("state"), str):
            call.apply_state(data["state"])
        if call.state == "terminated" and not was_terminated and self._on_terminated is not None:
            self._on_terminated(call)
