"""`python -m bot frames record|replay`: make a frames fixture from an emulated meeting, and
check one by replaying it through the default VAD against its script.

The fixture format, the recorder and the replay are media's (media/pipeline/fixture_format.py,
media/pipeline/replay.py); only recording needs the bot, which is why this command lives here:
media/ never imports bot/. bot/cli.py parses the arguments and prints.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from pathlib import Path

from bot.app import Bot
from bot.demo import start_local_environment
from bot.scenarios import ScenarioRun, play
from media.clock import TICKS_PER_SECOND
from media.frames import AUDIO_FRAME_MS
from media.pipeline.events import frame_time
from media.pipeline.fixture_format import FRAME_TICKS, FrameFixture, load, save_frames
from media.pipeline.replay import FrameFixtureRecorder, clip_script, match_script, replay


async def record_scenario(
    scenario: str, seconds: float, out: Path, mixed: bool = False, max_frames: int | None = None
) -> FrameFixture:
    """Play an emulator scenario's meeting with the bot, recording every frame its pipeline
    got, and save it with the script. Emulator and bot run in this process (bot/demo.py).
    Raises ScenarioError (a ValueError) for an unknown scenario, ValueError for one without a
    meeting, RuntimeError when no media was recorded."""
    limit = max_frames or math.ceil(seconds * 1000 / AUDIO_FRAME_MS) + 100
    with tempfile.TemporaryDirectory() as tmp:
        env = await start_local_environment(Path(tmp), scenario)
        if not env.scenario.meetings:
            await asyncio.to_thread(env.thread.stop)
            raise ValueError(f"scenario {scenario} has no meeting to join")
        # An emulated meeting of synthetic voices: recording from the first frame is fine
        # (the bot still sets the recording status, as it would in a real call).
        recorder = FrameFixtureRecorder(limit, recording=True)
        run = ScenarioRun()
        bot = Bot(env.settings, processors=lambda ctx: [recorder])
        table = dict(env.scenario.bot) | {
            "action": "join",
            "seconds": seconds,
            "unmixed": not mixed,
        }

        async def ring() -> int:
            return 0

        try:
            await bot.start()
            await play(bot, table, run, env.emulator.join_url(env.meeting), ring)
            link = env.emulator.calls[run.calls[0].call.id].link
            media_start = link.media_start if link is not None else None
        finally:
            await bot.stop()
            await asyncio.to_thread(env.thread.stop)
    if media_start is None:
        raise RuntimeError("the call's media never started: nothing was recorded")
    frames = recorder.frames
    if not frames:
        raise RuntimeError("the bot's pipeline received no frames")
    start_ticks = round(media_start * TICKS_PER_SECOND)
    first, last = frames[0], frames[-1]
    span = (
        (frame_time(first.timestamp, first.original_sender_timestamp) - start_ticks)
        / TICKS_PER_SECOND,
        (frame_time(last.timestamp, last.original_sender_timestamp) + FRAME_TICKS - start_ticks)
        / TICKS_PER_SECOND,
    )
    talk = {
        p.msi: p.talk if p.talk is not None else ((0.0, math.inf),)
        for p in env.meeting.participants
    }
    source = (
        f"emulator scenario {scenario!r} ({'mixed' if mixed else 'unmixed'} audio), the bot "
        f"in the meeting for {seconds:g} s: `python -m bot frames record --scenario "
        f"{scenario} --seconds {seconds:g}{' --mixed' if mixed else ''}`"
        + (f"; {recorder.skipped} frames past max_frames not kept" if recorder.skipped else "")
    )
    await asyncio.to_thread(save_frames, out, frames, source, clip_script(talk, *span), start_ticks)
    return await asyncio.to_thread(load, out)


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000):+5d} ms"  # round() first: no "-0 ms"


def report(fixture: FrameFixture) -> list[str]:
    """The fixture replayed through the default VAD: its size, source, replay speed, and each
    scripted utterance's onset and offset errors. Lines for a person to read."""
    result = replay(fixture, [])
    matches, extra = match_script(fixture, result.segments())
    size = sum(p.stat().st_size for p in (fixture.directory or Path()).glob("*") if p.is_file())
    lines = [
        f"{fixture.directory}: {fixture.manifest.frames} frames, {fixture.manifest.mode}, "
        f"{size / 1024:.0f} KiB",
        f"  source   {fixture.manifest.source}",
        f"  replay   {result.stats.media_seconds:.2f} s of media in "
        f"{result.stats.wall_seconds * 1000:.1f} ms ({result.stats.speedup:.0f}x real time), "
        f"{len(result.events)} events",
    ]
    for m in matches:
        errors = (
            f"onset {_ms(m.onset_error)}  offset {_ms(m.offset_error)}"
            if math.isfinite(m.onset_error)
            else "no segment"
        )
        lines.append(f"  MSI {m.msi}  {m.start:5.2f}-{m.end:5.2f} s  {errors}")
    if matches:
        within = sum(m.within(0.06) for m in matches)
        lines.append(f"  within 60 ms: {within}/{len(matches)}; unmatched segments: {len(extra)}")
    return lines
