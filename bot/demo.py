"""`python -m bot demo`: the emulator and the bot in one process, one meeting, an echo.

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
from bot.settings import Settings
from emulator import Emulator, EmulatorConfig, EmulatorThread
from emulator.analysis import Recording
from emulator.participant import Meeting, demo_meeting
from emulator.server import AppRegistration
from media.frames import AudioFrame
from media.pipeline import EchoProcessor

ESTABLISH_TIMEOUT_SECONDS = 30.0
TERMINATE_TIMEOUT_SECONDS = 15.0


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
        return frame


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
    meeting: Meeting


async def start_local_environment(out_dir: Path) -> LocalEnvironment:
    """Throwaway certificates, the demo meeting, a running emulator, and matching settings."""
    certs = await asyncio.to_thread(make_dev_certs, out_dir / "certs")
    settings = Settings(
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        ca_file=certs.ca_file,
        webhook_port=0,
        instance_internal_port=0,
    )
    meeting = demo_meeting(settings.tenant_id)
    app = AppRegistration(settings.app_id, settings.app_secret, settings.tenant_id)
    thread = await asyncio.to_thread(
        EmulatorThread,
        EmulatorConfig(
            cert_file=certs.cert_file,
            key_file=certs.key_file,
            trust_file=certs.ca_file,
            apps={settings.app_id: app},
            meetings=[meeting],
        ),
    )
    emulator = await asyncio.to_thread(thread.start)
    base = emulator.base_url
    settings = settings.replace(
        graph_url=f"{base}/v1.0",
        authority_url=base,
        notification_openid_url=f"{base}/v1/.well-known/OpenIdConfiguration",
    )
    return LocalEnvironment(settings, thread, emulator, meeting)


async def run_demo(
    seconds: float, out_dir: Path, json_path: Path | None = None, show: bool = True
) -> dict[str, Any]:
    started = time.monotonic()
    env = await start_local_environment(out_dir)
    emulator_thread, emulator, meeting = env.thread, env.emulator, env.meeting
    tally = SpeakerTally()
    bot = Bot(env.settings, processors=lambda: [tally, EchoProcessor()])
    try:
        await bot.start()
        call = await bot.join(emulator.join_url(meeting))
        await call.wait_for("established", ESTABLISH_TIMEOUT_SECONDS)
        if show:
            print(f"joined call {call.id}; echoing for {seconds:g} s")
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            # The demo's length is the point here, not a wait for an event.
            await asyncio.sleep(min(1.0, left))
            if show:
                stats = bot.media.session(call.media_session_id or "")
                s = stats.stats if stats else {}
                print(
                    f"  {call.state:12s} received {s.get('received', 0):5d}  "
                    f"sent {s.get('sent', 0):5d}"
                )
        media_stats = dict(bot.media.session(call.media_session_id or "").stats)  # type: ignore[union-attr]
        await call.hang_up()
        await call.wait_for("terminated", TERMINATE_TIMEOUT_SECONDS)
        report, heard = await emulator_thread.run_async(emulator.echo_report(call.id))
    finally:
        await bot.stop()
        await asyncio.to_thread(emulator_thread.stop)

    wav_dir = json_path.parent if json_path else out_dir
    await asyncio.to_thread(write_wav, wav_dir / "participant_heard.wav", heard)
    roster = {pid: p.identity for pid, p in call.participants.items()}
    summary: dict[str, Any] = {
        "call_id": call.id,
        "call_states": call.states_seen,
        "result_info": call.result_info,
        "frames_received": media_stats.get("received", 0),
        "frames_sent": media_stats.get("sent", 0),
        "frames_dropped": media_stats.get("receive_dropped", 0)
        + media_stats.get("send_dropped", 0),
        "rtp_packets": media_stats.get("rtp_packets", 0),
        "participant_frames_sent": report.frames_sent,
        "participant_frames_heard": report.frames_heard,
        "echo_correlation": round(report.correlation, 4),
        "echo_delay_ms": round(report.delay_ms, 1),
        "roster": roster,
        "speaker_msis": sorted(call.msi_to_participant()),
        "speaker_frames": {str(msi): n for msi, n in sorted(tally.frames.items())},
        "frames_processed": tally.seen,
        "hot_loop_late_ticks": bot.media.hot_loop.stats.late_ticks,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if json_path is not None:
        await asyncio.to_thread(json_path.write_text, json.dumps(summary, indent=2) + "\n")
    if show:
        print_summary(summary, wav_dir / "participant_heard.wav")
    return summary


def print_summary(summary: dict[str, Any], wav: Path) -> None:
    print()
    print("graph-media-bot demo summary")
    print(f"  call states      {' -> '.join(summary['call_states'])}")
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
    print(f"  heard audio      {wav}")
    print(f"  took             {summary['wall_seconds']} s")
