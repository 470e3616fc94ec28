"""Service-hosted media operations: playPrompt, recordResponse and cancelMediaProcessing, queued
in order per call (https://learn.microsoft.com/en-us/graph/api/call-playprompt, .../call-record,
.../call-cancelmediaprocessing), and the recorded files they hand out (recordingLocation +
recordingAccessToken)."""

from __future__ import annotations

import asyncio
import io
import secrets
import uuid
import wave
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.calls import (
    EmulatedCall,
    MediaJob,
    Operation,
    add_operation,
    finish_operation,
    result_info,
    scaled,
)
from emulator.odata import (
    CALL,
    BadRequest,
    bounded_int,
    client_context,
    graph_error,
    optional_bool,
)
from emulator.routing import call_action, operation_response

if TYPE_CHECKING:
    from emulator.server import Emulator

PROMPT_SECONDS = 2.0  # how long one prompt plays; the emulator does not fetch the WAV
# "The maximum supported MediaPrompt collection size is 20" (https://learn.microsoft.com/en-us/graph/api/call-playprompt)
MAX_PROMPTS = 20
MAX_QUEUED = 100
RECORDINGS_KEPT = 100
# The results of https://learn.microsoft.com/en-us/graph/api/call-playprompt, .../call-record and
# .../call-cancelmediaprocessing
PROMPT_DONE = result_info(200, 0, "Action completed successfully.")
RECORD_DONE = result_info(200, 8515, "Action completed, max record duration reached.")
CANCELLED = result_info(400, 8508, "Action failed, the operation was cancelled.")


def routes(emulator: Emulator) -> list[web.RouteDef]:
    async def recording(request: web.Request) -> web.Response:
        """GET recordingLocation with `Authorization: Bearer <recordingAccessToken>`
        (example 2 of https://learn.microsoft.com/en-us/graph/api/call-record)."""
        entry = emulator.recordings.get(request.match_info["recording_id"])
        if entry is None:
            return graph_error(404, "NotFound", "Recording not found.")
        token, data = entry
        if request.headers.get("Authorization", "") != f"Bearer {token}":
            return graph_error(401, "InvalidAuthenticationToken", "Wrong recording token.")
        return web.Response(body=data, content_type="application/octet-stream")

    record_action = call_action(emulator, record)
    return [
        web.post(CALL + "/playPrompt", call_action(emulator, play_prompt)),
        web.post(CALL + "/recordResponse", record_action),
        web.post(CALL + "/cancelMediaProcessing", call_action(emulator, cancel_media_processing)),
        web.get("/emulator/recordings/{recording_id}", recording),
    ]


def _service_hosted_only(call: EmulatedCall, action: str) -> None:
    # "supported only for calls that are initiated with serviceHostedMediaConfig"
    # (https://learn.microsoft.com/en-us/graph/api/call-playprompt, .../call-record).
    if call.app_hosted:
        raise BadRequest(f"{action} is supported only for calls with serviceHostedMediaConfig.")


def _prompts(body: dict[str, Any], most: int, required: bool) -> int:
    prompts = body.get("prompts")
    if prompts is None and not required:
        return 0
    low = 1 if required else 0
    if not isinstance(prompts, list) or not low <= len(prompts) <= most:
        raise BadRequest(f"prompts must list {low} to {most} mediaPrompts.")
    for prompt in prompts:
        info = prompt.get("mediaInfo") if isinstance(prompt, dict) else None
        if not isinstance(info, dict) or not isinstance(info.get("uri"), str):
            raise BadRequest("each prompt needs mediaInfo.uri.")
    return len(prompts)


async def play_prompt(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 + Location with a running playPromptOperation; when its turn in the queue has played,
    `deleted` completed {200, 0}."""
    _service_hosted_only(call, "playPrompt")
    count = _prompts(body, MAX_PROMPTS, required=True)
    operation = add_operation(call, "playPromptOperation", client_context(body))

    def done() -> None:
        finish_operation(emulator, call, operation, "completed", PROMPT_DONE)

    _enqueue(emulator, call, MediaJob(operation, count * PROMPT_SECONDS, done))
    return operation_response(emulator, call, operation)


async def record(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 + Location with a running recordOperation; after maxRecordDurationInSeconds it
    completes {200, 8515} with recordingLocation and recordingAccessToken
    (https://learn.microsoft.com/en-us/graph/api/call-record)."""
    _service_hosted_only(call, "recordResponse")
    count = _prompts(body, 1, required=False)
    optional_bool(body, "bargeInAllowed", False)
    optional_bool(body, "playBeep", True)
    for key in ("initialSilenceTimeoutInSeconds", "maxSilenceTimeoutInSeconds"):
        bounded_int(body, key, 1, 120, 5)
    duration = bounded_int(body, "maxRecordDurationInSeconds", 1, 120, 5)
    stop_tones = body.get("stopTones", [])
    if not isinstance(stop_tones, list) or not all(isinstance(t, str) for t in stop_tones):
        raise BadRequest("stopTones must be a list of strings.")
    operation = add_operation(call, "recordOperation", client_context(body))
    operation.extra.update(recordingLocation=None, recordingAccessToken=None)

    def done() -> None:
        location, token = _store_recording(emulator)
        finish_operation(
            emulator,
            call,
            operation,
            "completed",
            RECORD_DONE,
            recordingLocation=location,
            recordingAccessToken=token,
            completionReason="maxRecordDurationReached",
        )

    _enqueue(emulator, call, MediaJob(operation, count * PROMPT_SECONDS + duration, done))
    return operation_response(emulator, call, operation)


async def cancel_media_processing(
    emulator: Emulator, call: EmulatedCall, body: dict[str, Any], request: web.Request
) -> web.Response:
    """200 + Location with a completed cancelMediaProcessingOperation; every running or queued
    prompt/record fails {400, 8508}, completionReason operationCanceled."""
    _service_hosted_only(call, "cancelMediaProcessing")
    operation = add_operation(call, "cancelMediaProcessingOperation", client_context(body))
    operation.status = "completed"
    if call.media_worker is not None:
        call.media_worker.cancel()
        call.media_worker = None
    jobs = list(call.media_queue)
    call.media_queue.clear()
    for job in jobs:
        _fail_cancelled(emulator, call, job.operation)
    return operation_response(emulator, call, operation)


def _fail_cancelled(emulator: Emulator, call: EmulatedCall, operation: Operation) -> None:
    extra: dict[str, Any] = {"completionReason": "operationCanceled"}
    if operation.kind == "recordOperation":
        extra.update(recordingLocation="", recordingAccessToken="")
    finish_operation(emulator, call, operation, "failed", CANCELLED, **extra)


def _enqueue(emulator: Emulator, call: EmulatedCall, job: MediaJob) -> None:
    if len(call.media_queue) >= MAX_QUEUED:
        raise BadRequest("Too many media operations are queued on this call.")
    call.media_queue.append(job)
    if call.media_worker is None or call.media_worker.done():
        call.media_worker = asyncio.create_task(_run_queue(emulator, call))


async def _run_queue(emulator: Emulator, call: EmulatedCall) -> None:
    while call.media_queue:
        job = call.media_queue[0]
        await asyncio.sleep(scaled(emulator, job.seconds))
        call.media_queue.popleft()
        job.done()


def _store_recording(emulator: Emulator) -> tuple[str, str]:
    """Keep one second of silence (16 kHz mono PCM16 WAV) behind a one-off bearer token."""
    recording_id, token = str(uuid.uuid4()), secrets.token_urlsafe(24)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\x00\x00" * 16_000)
    emulator.recordings[recording_id] = (token, buffer.getvalue())
    while len(emulator.recordings) > RECORDINGS_KEPT:
        del emulator.recordings[next(iter(emulator.recordings))]
    return f"{emulator.base_url}/emulator/recordings/{recording_id}", token
