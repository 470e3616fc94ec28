"""`python -m bot demo`: the emulator and the bot in one process, playing a scenario
(emulator/scenarios/, `demo` by default: one speaker, the bot echoes).

The emulator runs on its own thread and loop (it stands in for Graph and Teams); the bot runs
on this loop with its media and hot-loop threads, exactly as in production.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.app import Bot
from bot.devcerts import make_dev_certs
from bot.scenarios import CallRecord, ScenarioRun, play
from bot.settings import Settings
from emulator import Emulator, EmulatorThread
from emulator.analysis import Recording
from emulator.incoming import ring_incoming
from emulator.participant import Meeting, demo_meeting
from emulator.scenario import Scenario, load
from emulator.server import AppRegistration
from media.frames import AudioFrame
from media.pipeline import EchoProcessor


class SpeakerTally:
    """Counts frames per active speaker MSI: shows the CSRC tags reach the pipeline."""

    name = "speaker-tally"

    def __init__(self) -> None:
        self.seen = 0
        self.frames: dict[int, int] = {}

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        self.seen += 1
        for msi in frame.active_speakers:
            self.frames[msi] = self.frames.get(msi, 0) + 1
        return None  # a tap: says nothing


def write_wav(path: Path, recording: Recording, rate_hz: int = 16_000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.concatenate(recording.frames) if recording.frames else np.zeros(0, np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(pcm.astype("<i2").tobytes())


@dataclass
class LocalEnvironment:
    """The emulator on its own thread, and bot settings pointing at it (demo and benchmarks)."""

    settings: Settings
    thread: EmulatorThread
    emulator: Emulator
    meeting: Meeting  # the scenario's meeting the bot joins (the first, or [bot] meeting)
    scenario: Scenario


async def start_local_environment(out_dir: Path, scenario: str = "demo") -> LocalEnvironment:
    """Throwaway certificates, a scenario's meetings (emulator/scenarios/NAME.toml), a running
    emulator, and matching settings. Raises ScenarioError for an unknown or broken scenario."""
    played = load(scenario)
    certs = await asyncio.to_thread(make_dev_certs, out_dir / "certs")
    settings = Settings(
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        ca_file=certs.ca_file,
        webhook_port=0,
        instance_internal_port=0,
    )
    app = AppRegistration(settings.app_id, settings.app_secret, settings.tenant_id)
    config = played.config(
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        trust_file=certs.ca_file,
        apps={settings.app_id: app},
    )
    thread = await asyncio.to_thread(EmulatorThread, config)
    emulator = await asyncio.to_thread(thread.start)
    base = emulator.base_url
    settings = settings.replace(
        graph_url=f"{base}/v1.0",
        authority_url=base,
        notification_openid_url=f"{base}/v1/.well-known/OpenIdConfiguration",
    )
    # A scenario of incoming calls only has no meeting to join: the demo meeting stands in
    # (unknown to this emulator), so `meeting` is always there for the benchmarks' joins.
    meeting = played.meeting(played.bot.get("meeting")) if played.meetings else demo_meeting("")
    return LocalEnvironment(settings, thread, emulator, meeting, played)


async def run_demo(
    seconds: float | None,
    out_dir: Path,
    json_path: Path | None = None,
    show: bool = True,
    scenario: str = "demo",
) -> dict[str, Any]:
    """Play a scenario with the bot echoing what it hears; `seconds` overrides how long the bot
    stays in each call. Returns the summary (also written to json_path)."""
    started = time.monotonic()
    env = await start_local_environment(out_dir, scenario)
    emulator_thread, emulator, played = env.thread, env.emulator, env.scenario
    tally = SpeakerTally()
    run = ScenarioRun()
    stats: dict[str, dict[str, int]] = {}
    recordings = out_dir / "recordings"
    # Recorder and timeline come from settings, as a deployment would configure them
    # (BOT_PROCESSORS); the recorder starts once Graph acknowledged the recording status.
    settings = env.settings.replace(processors="recorder,timeline", recordings_dir=str(recordings))
    bot = Bot(settings, processors=lambda ctx: [tally, run.heard, EchoProcessor()])
    table = dict(played.bot)
    if seconds is not None:
        table["seconds"] = seconds

    def progress(record: CallRecord) -> None:
        session = bot.media_session(record.call)
        if session is None:
            return
        s = stats[record.call.id] = dict(session.stats)
        if show:
            print_live(record, s)

    async def ring() -> int:
        await emulator_thread.run_async(ring_incoming(emulator, bot.callback_url))
        return len(played.incoming)

    try:
        await bot.start()
        if show:
            print(f"scenario {played.name}: {played.description}")
        join_url = emulator.join_url(env.meeting) if played.meetings else None
        await play(bot, table, run, join_url, ring, progress)
        first = run.calls[0].call
        report, heard = await emulator_thread.run_async(emulator.echo_report(first.id))
    finally:
        await bot.stop()
        await asyncio.to_thread(emulator_thread.stop)

    wav_dir = json_path.parent if json_path else out_dir
    await asyncio.to_thread(write_wav, wav_dir / "participant_heard.wav", heard)
    media_stats = stats.get(first.id, {})
    summary: dict[str, Any] = {
        "scenario": played.name,
        "call_id": first.id,
        "call_states": first.states_seen,
        "result_info": first.result_info,
        "calls": [
            {
                "id": r.call.id,
                "direction": r.call.direction,
                "states": r.states,
                "result_info": r.call.result_info,
                "roster_updates": len(r.roster),
                "roster": sorted({p.name for e in r.roster for p in e.participants.values()}),
            }
            for r in run.calls
        ],
        "frames_received": media_stats.get("received", 0),
        "frames_sent": media_stats.get("sent", 0),
        "frames_dropped": media_stats.get("receive_dropped", 0)
        + media_stats.get("send_dropped", 0),
        "rtp_packets": media_stats.get("rtp_packets", 0),
        "participant_frames_sent": report.frames_sent,
        "participant_frames_heard": report.frames_heard,
        "echo_correlation": round(report.correlation, 4),
        "echo_delay_ms": round(report.delay_ms, 1),
        "roster": {pid: p.identity for pid, p in first.participants.items()},
        "speaker_msis": sorted(first.msi_to_participant()),
        "speaker_frames": {str(msi): n for msi, n in sorted(tally.frames.items())},
        "frames_processed": tally.seen,
        "hot_loop_late_ticks": bot.media.hot_loop.stats.late_ticks,
        "recording_status": first.speech.recording_status,
        "recordings": sorted(str(p.relative_to(out_dir)) for p in recordings.rglob("*.wav")),
        "timeline_png": next((str(p) for p in recordings.rglob("timeline.png")), None),
        "speech_segments": {
            str(msi): len(segments)
            for msi, segments in sorted(first.speech.segments_by_msi().items())
            if msi >= 0
        },
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if json_path is not None:
        await asyncio.to_thread(json_path.write_text, json.dumps(summary, indent=2) + "\n")
    if show:
        print_summary(summary, wav_dir / "participant_heard.wav")
    return summary


def print_live(record: CallRecord, stats: dict[str, int]) -> None:
    """One block per second: the call, then each participant with their speaking state."""
    call = record.call
    print(
        f"  {call.state:12s} recording: {call.speech.recording_status:12s} "
        f"frames in {stats.get('received', 0):5d} out {stats.get('sent', 0):5d}"
    )
    for participant in sorted(call.participants.values(), key=lambda p: p.display_name):
        msis = participant.msis("audio")
        if not participant.display_name or not msis:
            continue
        speaking = any(msi in call.speech.speaking for msi in msis)
        dominant = call.speech.dominant in msis
        state = "speaking" if speaking else ("muted" if participant.is_muted else "-")
        print(
            f"    {participant.display_name:24s} MSI {msis[0]:>6d}  {state:9s}"
            f"{' (dominant)' if dominant else ''}"
        )


def print_summary(summary: dict[str, Any], wav: Path) -> None:
    print()
    print("graph-media-bot demo summary")
    print(f"  scenario         {summary['scenario']}")
    for call in summary["calls"]:
        result = call["result_info"] or {}
        print(
            f"  call {call['id'][:8]}    {call['direction']}: {' -> '.join(call['states'])} "
            f"(result {result.get('code')}/{result.get('subcode')}); "
            f"roster {', '.join(n for n in call['roster'] if n) or '-'}"
        )
    print(
        f"  frames           received {summary['frames_received']}, "
        f"sent {summary['frames_sent']}, dropped {summary['frames_dropped']}"
    )
    print(
        f"  participant      sent {summary['participant_frames_sent']} frames, "
        f"heard {summary['participant_frames_heard']} back"
    )
    print(
        f"  echo             correlation {summary['echo_correlation']:.3f}, "
        f"delay {summary['echo_delay_ms']:.0f} ms (round trip)"
    )
    print(f"  speakers (MSI)   {summary['speaker_msis']}")
    print(f"  speech segments  {summary['speech_segments']} (by MSI)")
    print(f"  recording        {summary['recording_status']}: {', '.join(summary['recordings'])}")
    print(f"  timeline         {summary['timeline_png']}")
    print(f"  heard audio      {wav}")
    print(f"  took             {summary['wall_seconds']} s")
