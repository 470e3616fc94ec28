"""Stopping `python -m bot join URL` leaves the call through Graph: SIGTERM or Ctrl-C sets the
recording status to notRecording, hangs up (DELETE), finalizes the WAV and exits 0; a second
Ctrl-C exits at once and names the call it leaves up."""

from __future__ import annotations

import asyncio
import re
import signal
import wave
from pathlib import Path

import pytest

from bot.devcerts import DevCerts
from emulator import Emulator
from emulator.faults import FaultRule
from tests.cli import settings_env, start_bot
from tests.conftest import meeting, settings_for

EXIT_SECONDS = 30.0
ACKNOWLEDGED = re.compile(r"Call\((?P<id>[^)]+)\) recording status recording acknowledged")
WRITING = re.compile(r"recorder\(.*\) writing .*mixed-0001\.wav")


class Lines:
    """A subprocess's stderr, read as it comes: wait for the line that matches."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.seen: list[str] = []
        self._stream = stream

    async def wait_for(self, pattern: re.Pattern[str], seconds: float) -> re.Match[str]:
        async with asyncio.timeout(seconds):
            while True:
                raw = await self._stream.readline()
                if not raw:
                    raise AssertionError("the bot exited early:\n" + "".join(self.seen))
                line = raw.decode()
                self.seen.append(line)
                found = pattern.search(line)
                if found:
                    return found

    async def rest(self) -> str:
        self.seen.append((await self._stream.read()).decode())
        return "".join(self.seen)


async def join_and_record(
    emulator: Emulator, certs: DevCerts, tmp_path: Path
) -> tuple[asyncio.subprocess.Process, Lines, str]:
    env = settings_env(settings_for(emulator, certs))
    env |= {"BOT_PROCESSORS": "recorder", "BOT_RECORDINGS_DIR": str(tmp_path / "rec")}
    url = emulator.join_url(meeting())
    process = await start_bot("join", url, env=env, cwd=tmp_path)
    assert process.stderr is not None
    lines = Lines(process.stderr)
    found = await lines.wait_for(ACKNOWLEDGED, EXIT_SECONDS)
    await lines.wait_for(WRITING, EXIT_SECONDS)  # audio reaches the file
    return process, lines, found["id"]


def requests_for(emulator: Emulator, call_id: str) -> list[tuple[str, str]]:
    """(method, what) of each Graph request about the call, in the order received."""
    seen = []
    for recorded in emulator.requests:
        if call_id not in recorded.path:
            continue
        body = recorded.json if isinstance(recorded.json, dict) else {}
        what = recorded.path.rsplit("/", 1)[-1]
        if what == "updateRecordingStatus":
            what += ":" + str(body.get("status"))
        seen.append((recorded.method, what))
    return seen


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_leaves_the_call_through_graph(
    emulator: Emulator, certs: DevCerts, tmp_path: Path, signum: int
) -> None:
    process, lines, call_id = await join_and_record(emulator, certs, tmp_path)
    process.send_signal(signum)
    code = await asyncio.wait_for(process.wait(), EXIT_SECONDS)
    output = await lines.rest()
    assert code == 0, output
    sequence = requests_for(emulator, call_id)
    stopped = sequence.index(("POST", "updateRecordingStatus:notRecording"))
    hung_up = sequence.index(("DELETE", call_id))
    assert stopped < hung_up, sequence
    emulated = emulator.calls[call_id]
    assert emulated.state == "terminated"
    assert [s for _, s in emulated.recording_history] == ["recording", "notRecording"]
    wavs = sorted((tmp_path / "rec").rglob("*.wav"))
    assert wavs, output
    with wave.open(str(wavs[0])) as recording:
        assert (recording.getframerate(), recording.getnchannels()) == (16_000, 1)
        assert recording.getnframes() > 0


async def test_a_second_interrupt_exits_at_once_naming_the_call(
    emulator: Emulator, certs: DevCerts, tmp_path: Path
) -> None:
    process, lines, call_id = await join_and_record(emulator, certs, tmp_path)
    # Graph answers the call's next request with 503 Retry-After 30 s: the graceful leave is
    # still waiting when the second Ctrl-C comes (https://learn.microsoft.com/en-us/graph/throttling).
    emulator.faults.append(FaultRule(503, 30.0, 1, f"/v1.0/communications/calls/{call_id}"))
    retrying = re.compile(r"got 503; retrying")
    process.send_signal(signal.SIGINT)
    await lines.wait_for(retrying, EXIT_SECONDS)
    process.send_signal(signal.SIGINT)
    code = await asyncio.wait_for(process.wait(), EXIT_SECONDS)
    output = await lines.rest()
    assert code == 130, output
    assert re.search(rf"second interrupt: exiting now; left up in Graph: {call_id} \(", output)
    assert ("DELETE", call_id) not in requests_for(emulator, call_id)


async def test_a_second_sigterm_does_not_cut_the_leave_short(
    emulator: Emulator, certs: DevCerts, tmp_path: Path
) -> None:
    """timeout(1) and some supervisors deliver SIGTERM to the process and to its group: the
    bot still leaves its calls and exits 0."""
    process, lines, call_id = await join_and_record(emulator, certs, tmp_path)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), EXIT_SECONDS)
    output = await lines.rest()
    assert code == 0, output
    assert ("DELETE", call_id) in requests_for(emulator, call_id)
