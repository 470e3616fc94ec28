"""Pure signaling logic: retry delays, request shapes, operations, keep-alive, deadlines."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from bot.call import Call
from bot.calls import HELD_BYTES, HELD_NOTIFICATIONS, HELD_SECONDS, CallCollection
from bot.errors import GraphError
from bot.graph import shapes
from bot.graph.client import MAX_RETRY_AFTER_SECONDS, retry_after_seconds
from bot.keepalive import KeepAlive
from bot.operations import Operation, OperationFailedError


def test_retry_after_seconds_and_http_date_and_backoff() -> None:
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("3", 0, now) == 3.0
    assert retry_after_seconds("Tue, 24 Nov 2026 12:00:07 GMT", 0, now) == 7.0
    assert retry_after_seconds(None, 0, now) == 1.0
    assert retry_after_seconds("garbage", 2, now) == 4.0
    assert retry_after_seconds("100000", 0, now) == MAX_RETRY_AFTER_SECONDS
    assert retry_after_seconds("-5", 0, now) == 0.0


def test_identity_sets_name_exactly_one_kind() -> None:
    user = shapes.identity_set(user_id="u1", display_name="Ann", tenant_id="t")
    assert user["user"] == {
        "@odata.type": "#microsoft.graph.identity",
        "displayName": "Ann",
        "id": "u1",
        "tenantId": "t",
    }
    assert "guest" in shapes.identity_set(guest_id="g", display_name="Guest")
    with pytest.raises(ValueError):
        shapes.identity_set(user_id="u", phone="+1")


def test_dtmf_tones_by_digit_or_name() -> None:
    assert shapes.tone_names("12#*") == ["tone1", "tone2", "pound", "star"]
    assert shapes.tone_names(["tone0", "flash"]) == ["tone0", "flash"]
    with pytest.raises(ValueError, match="unknown DTMF"):
        shapes.tone_names("x")


async def test_operation_outcomes() -> None:
    running = Operation(
        {"@odata.type": "#microsoft.graph.playPromptOperation", "id": "o1", "status": "running"}
    )
    assert not running.done
    running.update({"status": "completed", "resultInfo": {"code": 200, "subcode": 0}})
    assert (await running.wait(1)).status == "completed"
    failed = Operation(
        {"id": "o2", "status": "failed", "resultInfo": {"code": 400, "subcode": 8508}}
    )
    with pytest.raises(OperationFailedError) as caught:
        await failed.wait(1)
    assert caught.value.status == 400
    with pytest.raises(TimeoutError):
        await Operation({"id": "o3", "status": "running"}).wait(0.01)


class _KeepAliveCall(Call):
    """A call whose keep-alive request is answered in-process (the I/O seam)."""

    def __init__(self, fail_after: int) -> None:
        super().__init__("c1")
        self.state = "established"
        self.requests = 0
        self._fail_after = fail_after

    async def keep_alive(self) -> None:
        self.requests += 1
        if self.requests > self._fail_after:
            raise GraphError(404, "NotFound", "Call not found.")


async def test_keepalive_runs_every_interval_until_graph_forgets_the_call() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    keepalive = KeepAlive(interval_seconds=600.0, sleep=fake_sleep)
    call = _KeepAliveCall(fail_after=3)
    keepalive.start(call)
    await call.wait_for("terminated", 5)
    await keepalive.close()
    assert call.requests == 4 and keepalive.sent == 3
    assert slept == [600.0] * 4  # well inside Graph's 45-minute rule
    assert call.states_seen[-1] == "terminated"


class _Lifecycle:
    def __init__(self) -> None:
        self.fallbacks: list[str] = []

    def established(self, call: Call) -> None: ...

    def terminated(self, call: Call) -> None: ...

    async def incoming_fallback(self, call: Call) -> None:
        self.fallbacks.append(call.id)
        call.decision = "rejected"


def _incoming(call_id: str, observed: str | None = None) -> dict[str, object]:
    data: dict[str, object] = {
        "@odata.type": "#microsoft.graph.call",
        "state": "incoming",
        "direction": "incoming",
    }
    if observed:
        data["incomingContext"] = {"observedParticipantId": observed}
    return {
        "changeType": "created",
        "resourceUrl": f"/communications/calls/{call_id}",
        "resourceData": data,
    }


async def test_a_slow_handler_cannot_miss_the_answer_window() -> None:
    lifecycle = _Lifecycle()
    calls = CallCollection(lifecycle=lifecycle, window_scale=0.01)  # 15 s window -> 0.15 s
    release = asyncio.Event()

    @calls.events.on("incoming_call")
    async def slow(call: Call) -> None:
        await release.wait()  # user code that never decides in time

    calls.apply(_incoming("c-slow"))
    await asyncio.wait_for(calls.idle(), 5)
    assert lifecycle.fallbacks == ["c-slow"]
    release.set()


async def test_a_handler_that_decides_is_not_overruled() -> None:
    lifecycle = _Lifecycle()
    calls = CallCollection(lifecycle=lifecycle, window_scale=0.01)
    calls.events.on("incoming_call", lambda call: setattr(call, "decision", "answered"))
    calls.apply(_incoming("c-fast"))
    calls.apply(_incoming("c-pbr", observed="p-7"))
    await asyncio.wait_for(calls.idle(), 5)
    assert lifecycle.fallbacks == []
    assert calls.calls["c-pbr"].is_policy_recording


async def test_no_handler_means_the_fallback_decides_at_once() -> None:
    lifecycle = _Lifecycle()
    calls = CallCollection(lifecycle=lifecycle)
    calls.apply(_incoming("c-none"))
    await asyncio.wait_for(calls.idle(), 1)
    assert lifecycle.fallbacks == ["c-none"]


async def test_ended_calls_are_forgotten_and_stay_forgotten() -> None:
    calls = CallCollection()
    calls.get_or_add("c-end")  # a call the bot placed
    item = {
        "changeType": "deleted",
        "resourceUrl": "/communications/calls/c-end",
        "resourceData": {"state": "terminated", "resultInfo": {"code": 0}},
    }
    calls.apply(
        {
            "changeType": "updated",
            "resourceUrl": "/communications/calls/c-end",
            "resourceData": {"state": "established"},
        }
    )
    calls.forget("c-end")  # not ended yet: kept
    assert "c-end" in calls.calls
    calls.apply(item)
    await calls.idle()
    calls.forget("c-end")
    assert "c-end" not in calls.calls
    calls.apply({**item, "resourceData": {"state": "established"}, "changeType": "updated"})
    assert "c-end" not in calls.calls and calls.late == 1


async def test_one_calls_stuck_handler_does_not_delay_another_call() -> None:
    calls = CallCollection()
    stuck = asyncio.Event()
    seen: list[str] = []

    @calls.events.on("state")
    async def handler(call: Call, state: str) -> None:
        if call.id == "slow":
            await stuck.wait()
        seen.append(call.id)

    for call_id in ("slow", "fast"):
        calls.get_or_add(call_id)  # calls the bot placed
        calls.apply(
            {
                "changeType": "updated",
                "resourceUrl": f"/communications/calls/{call_id}",
                "resourceData": {"state": "established"},
            }
        )
    # The state itself is applied at once for both, whatever the handlers do.
    assert calls.calls["slow"].state == calls.calls["fast"].state == "established"
    fast_done = asyncio.Event()
    calls.calls["fast"].events.on("state", lambda call, state: fast_done.set())
    calls.apply(
        {
            "changeType": "updated",
            "resourceUrl": "/communications/calls/fast",
            "resourceData": {"state": "terminating"},
        }
    )
    await asyncio.wait_for(fast_done.wait(), 5)
    assert seen == ["fast", "fast"]
    stuck.set()
    await calls.idle()
    assert seen == ["fast", "fast", "slow"]


async def test_a_final_operation_stays_final_when_the_post_answer_comes_late() -> None:
    op = Operation({"id": "o9", "status": "failed", "resultInfo": {"code": 400, "subcode": 8508}})
    op.update({"id": "o9", "status": "running", "resultInfo": None})  # the POST's own answer
    assert op.status == "failed" and op.result_info == {"code": 400, "subcode": 8508}


async def test_an_incoming_call_is_decided_once_even_if_created_comes_again() -> None:
    lifecycle = _Lifecycle()
    calls = CallCollection(lifecycle=lifecycle)
    calls.apply(_incoming("c-twice"))
    await calls.idle()
    calls.apply(
        {
            "changeType": "updated",
            "resourceUrl": "/communications/calls/c-twice",
            "resourceData": {"state": "establishing"},
        }
    )
    calls.apply(_incoming("c-twice"))  # Graph re-sends the incoming notification
    await calls.idle()
    assert lifecycle.fallbacks == ["c-twice"]
    assert calls.calls["c-twice"].state == "establishing"


async def test_a_decision_is_claimed_once() -> None:
    from bot.call import DecisionError

    call = Call("c-d")
    call.decision = "answered"
    with pytest.raises(DecisionError):
        await call.reject("busy")


class _EndRecorder(_Lifecycle):
    def __init__(self) -> None:
        super().__init__()
        self.ended: list[str] = []

    def terminated(self, call: Call) -> None:
        self.ended.append(call.id)


async def test_keepalive_404_ends_the_call_through_the_collection() -> None:
    lifecycle = _EndRecorder()
    calls = CallCollection(lifecycle=lifecycle)
    call = _KeepAliveCall(fail_after=0)
    calls.calls[call.id] = call
    ended = asyncio.Event()
    calls.events.on("terminated", lambda c: ended.set())
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    keepalive = KeepAlive(sleep=fake_sleep, on_gone=calls.end)
    keepalive.start(call)
    await asyncio.wait_for(ended.wait(), 5)
    assert lifecycle.ended == [call.id]  # media released, keep-alive stopped, events sent
    await keepalive.close()


def test_unusable_retry_after_values_fall_back_to_backoff() -> None:
    assert retry_after_seconds("nan", 1) == 2.0
    assert retry_after_seconds("inf", 0) == 1.0


# -- notifications for calls the bot does not know (bot/calls.py, "held") ----------------------


class _Counting(_Lifecycle):
    def __init__(self) -> None:
        super().__init__()
        self.established_calls: list[str] = []

    def established(self, call: Call) -> None:
        self.established_calls.append(call.id)


def _held_item(call_id: str, n: int) -> dict[str, object]:
    if n % 3 == 2:
        return {
            "changeType": "updated",
            "resourceUrl": f"/communications/calls/{call_id}/participants",
            "resourceData": [{"id": f"p{n}"}],
        }
    return {
        "changeType": "updated",
        "resourceUrl": f"/communications/calls/{call_id}",
        "resourceData": {"state": "established" if n % 3 else "establishing"},
    }


async def test_notifications_for_unknown_calls_are_held_within_bounds_then_expire() -> None:
    now = [0.0]
    lifecycle = _Counting()
    calls = CallCollection(lifecycle=lifecycle, clock=lambda: now[0])
    for n in range(1000):
        calls.apply(_held_item(f"u{n}", n))
        now[0] += 0.001
    assert calls.calls == {} and lifecycle.established_calls == []
    assert calls.held == 1000 and calls.held_now == HELD_NOTIFICATIONS
    assert calls.held_dropped == 1000 - HELD_NOTIFICATIONS  # the oldest went first
    calls.learned(calls.get_or_add("u0"))  # dropped long ago: nothing to apply
    assert calls.held_applied == 0 and calls.calls["u0"].states_seen == []
    now[0] += HELD_SECONDS
    calls.expire_held()
    assert calls.held_now == 0 and calls.held_bytes == 0
    assert calls.held_expired == HELD_NOTIFICATIONS
    await calls.close()


async def test_held_notifications_are_bounded_in_bytes() -> None:
    calls = CallCollection(clock=lambda: 0.0)
    big = {**_held_item("big", 0), "padding": "x" * (HELD_BYTES // 3)}
    for n in range(5):
        calls.apply({**big, "resourceUrl": f"/communications/calls/big{n}"})
    assert calls.held_now == 2 and calls.held_bytes <= HELD_BYTES and calls.held_dropped == 3
    calls.apply({**big, "padding": "x" * HELD_BYTES})  # bigger than all: not held at all
    assert calls.held_now == 0 and calls.held_dropped == 6
    await calls.close()


async def test_held_notifications_apply_in_order_once_the_call_is_learned() -> None:
    """Graph's notifications for a call the bot placed, before its POST answer: held, then
    applied in order (a duplicate once) when the answer names the call; expired ones never."""
    now = [0.0]
    lifecycle = _Counting()
    calls = CallCollection(lifecycle=lifecycle, clock=lambda: now[0])
    for n in range(3):
        calls.apply(_held_item("mine", n))
    calls.apply(_held_item("mine", 2))  # re-delivered
    calls.apply(_held_item("late", 1))
    assert calls.calls == {} and calls.held_now == 5
    call = calls.get_or_add("mine")
    calls.learned(call)
    assert call.states_seen == ["establishing", "established"] and "p2" in call.participants
    assert lifecycle.established_calls == ["mine"]
    assert (calls.held_applied, calls.duplicates, calls.held_now) == (3, 1, 1)
    now[0] += HELD_SECONDS
    late = calls.get_or_add("late")
    calls.learned(late)
    assert late.states_seen == [] and calls.held_expired == 1
    await calls.idle()
    await calls.close()
