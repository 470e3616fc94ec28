"""`python -m bot demo`: the emulator and the bot in one process, playing a scenario
(emulator/scenarios/, `demo` by default: one speaker, the bot echoes).

The emulator runs on its own thread and loop (it stands in for Graph and Teams); the bot runs
on this loop with its media and hot-loop threads, exactly as in production, with the processors
the settings name (BOT_PROCESSORS, BOT_PROCESSOR_OPTIONS; DEMO_PROCESSORS when unset). The
summary says whether the scenario's [expect] held (bot.scenarios.check_expect) and names the
files this run wrote.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import wave
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bot.app import Bot
from bot.devcerts import make_dev_certs
from bot.scenarios import CallRecord, Outcome, ScenarioRun, check_expect, play
from bot.settings import Settings
from emulator import Emulator, EmulatorThread
from emulator.analysis import Recording
from emulator.incoming import ring_incoming
from emulator.odata import identity_id
from emulator.participant import Meeting, demo_meeting
from emulator.scenario import Scenario, load
from emulator.server import AppRegistration
from media.frames import AudioFrame
from media.pipeline import plugins
from media.pipeline.plugins import print_processors as print_processors  # `bot processors`
from media.pipeline.processor import ProcessorContext

# What the demo runs when BOT_PROCESSORS is not set: echo, so the participant hears the bot
# (the demo measures that round trip), and the recorder and timeline a deployment would add.
DEMO_PROCESSORS = "echo,recorder,timeline"
RECORDING_SUFFIXES = (".wav", ".y4m")


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


def demo_settings(settings: Settings | None = None) -> Settings:
    """The settings the demo's bot starts from: `settings` (default Settings.load(), i.e. the
    environment), with DEMO_PROCESSORS when no source set BOT_PROCESSORS. Raises SettingsError,
    for an unknown processor too, with one line that lists the valid names."""
    base = Settings.load() if settings is None else settings
    if "processors" not in base.model_fields_set:
        base = base.replace(processors=DEMO_PROCESSORS)  # checked again: every name imports
    return base


async def start_local_environment(
    out_dir: Path, scenario: str = "demo", base: Settings | None = None
) -> LocalEnvironment:
    """Throwaway certificates, a scenario's meetings (emulator/scenarios/NAME.toml), a running
    emulator, and matching settings (from `base`, default Settings(): certificates, ports and
    Graph's URLs are the demo's own). Raises ScenarioError for an unknown or broken scenario."""
    played = load(scenario)
    certs = await asyncio.to_thread(make_dev_certs, out_dir / "certs")
    settings = (base or Settings()).replace(
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
    url = emulator.base_url
    settings = settings.replace(
        graph_url=f"{url}/v1.0",
        authority_url=url,
        notification_openid_url=f"{url}/v1/.well-known/OpenIdConfiguration",
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
    settings: Settings | None = None,
    on_bot: Callable[[Bot], None] | None = None,
) -> dict[str, Any]:
    """Play a scenario with the processors `settings` name (demo_settings: the environment's,
    default DEMO_PROCESSORS); `seconds` overrides how long the bot stays in each call. Returns
    the summary (also written to json_path): `ok` is whether the scenario's outcome held,
    `failed` says what did not. Raises ScenarioError or SettingsError before starting anything."""
    started = time.monotonic()
    load(scenario)  # a bad scenario or setting fails here, before certificates or the emulator
    base = demo_settings(settings)
    env = await start_local_environment(out_dir, scenario, base)
    emulator_thread, emulator, played = env.thread, env.emulator, env.scenario
    tally = SpeakerTally()
    run = ScenarioRun()
    stats: dict[str, dict[str, int]] = {}
    recordings = out_dir / "recordings"
    # The processors are the settings' (BOT_PROCESSORS), as a deployment configures them; the
    # recorder starts once Graph acknowledged the recording status. The demo's measurement taps
    # come first, so they see what the bot received.
    bot_settings = env.settings.replace(recordings_dir=str(recordings))
    bot = Bot(bot_settings, processors=lambda ctx: [tally, run.heard])
    if on_bot is not None:
        on_bot(bot)  # the CLI: what a second Ctrl-C would leave up
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
        outcome = await emulator_thread.run_async(_outcome(emulator, run))
    finally:
        await bot.stop()
        await asyncio.to_thread(emulator_thread.stop)
    people = {
        s.participant_id: s.display_name
        for s in [
            *(p for m in played.meetings for p in m.participants),
            *(p for c in played.incoming for p in (c.caller, *c.group)),
        ]
    }
    failed = check_expect(played.expect, table, run, people, outcome)
    files = await asyncio.to_thread(_session_files, bot_settings, run.calls)
    failed += _missing_recordings(bot_settings, run.calls, files, outcome)

    wav_dir = json_path.parent if json_path else out_dir
    await asyncio.to_thread(write_wav, wav_dir / "participant_heard.wav", heard)
    media_stats = stats.get(first.id, {})
    summary: dict[str, Any] = {
        "scenario": played.name,
        "ok": not failed,
        "failed": failed,
        "processors": plugins.parse_specs(bot_settings.processors),
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
                "redirected_to": outcome.redirected_to.get(r.call.id, []),
                "transfer_targets": outcome.transfer_targets.get(r.call.id, []),
                "recorded": r.call.id in outcome.recorded,
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
        "recordings": [
            _shown(p, out_dir) for p in files if p.suffix in RECORDING_SUFFIXES
        ],  # this run's calls' files only (each media session has a directory of its own)
        "timeline_png": next((str(p) for p in files if p.name == "timeline.png"), None),
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
        for line in failed:
            print(f"bot: demo {played.name}: not as expected: {line}", file=sys.stderr)
    return summary


async def _outcome(emulator: Emulator, run: ScenarioRun) -> Outcome:
    """What Graph saw of the run's calls (on the emulator's loop): redirects and transfers."""
    redirected, transfers = {}, {}
    for record in run.calls:
        view = emulator.calls.get(record.call.id)
        if view is not None:
            redirected[record.call.id] = list(view.redirected_to)
        suffix = f"/calls/{record.call.id}/transfer"
        transfers[record.call.id] = [
            identity_id(r.json["transferTarget"]["identity"]) or ""
            for r in emulator.requests
            if r.method == "POST" and r.path.endswith(suffix) and isinstance(r.json, dict)
        ]
    recorded = frozenset(
        call_id
        for call_id in redirected
        if any(status == "recording" for _, status in emulator.calls[call_id].recording_history)
    )
    return Outcome(redirected, transfers, frozenset(emulator.config.declining_users), recorded)


def _session_dirs(settings: Settings, records: Iterable[CallRecord]) -> list[Path]:
    """Where this run's processors put files: each media session's directory under the
    recordings directory, or under a processor's `dir` option (ProcessorContext.session_dir)."""
    options = plugins.parse_options(settings.processor_options)
    bases = {Path(settings.recordings_dir)} | {
        Path(o["dir"]) for o in options.values() if "dir" in o
    }
    dirs = set()
    for record in records:
        if record.call.media_session_id is not None:
            for base in bases:
                dirs.add(ProcessorContext(record.call.media_session_id, out_dir=base).session_dir())
    return sorted(dirs)


def _session_files(settings: Settings, records: Iterable[CallRecord]) -> list[Path]:
    return sorted(
        p
        for d in _session_dirs(settings, records)
        if d.is_dir()
        for p in d.rglob("*")
        if p.is_file()
    )


def _missing_recordings(
    settings: Settings, records: Iterable[CallRecord], files: list[Path], outcome: Outcome
) -> list[str]:
    """A recorder keeps audio once Graph acknowledged the `recording` status: every such call
    of this run must have a .wav in its session directory."""
    if "recorder" not in plugins.parse_specs(settings.processors):
        return []
    missing = []
    for record in records:
        if record.call.id not in outcome.recorded:
            continue
        dirs = _session_dirs(settings, [record])
        if not any(p.suffix == ".wav" and any(d in p.parents for d in dirs) for p in files):
            missing.append(f"call {record.call.id}: recording acknowledged, but no .wav written")
    return missing


def _shown(path: Path, out_dir: Path) -> str:
    return str(path.relative_to(out_dir)) if path.is_relative_to(out_dir) else str(path)


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
    print(f"  processors       {', '.join(summary['processors']) or '-'}")
    for call in summary["calls"]:
        result = call["result_info"] or {}
        print(
            f"  call {call['id'][:8]}    {call['direction']}: {' -> '.join(call['states'])} "
            f"(result {result.get('code')}/{result.get('subcode')}); "
            f"roster {', '.join(n for n in call['roster'] if n) or '-'}"
        )
        if call["redirected_to"]:
            print(f"                   redirected to {', '.join(call['redirected_to'])}")
        if call["transfer_targets"]:
            print(f"                   transferred to {' then '.join(call['transfer_targets'])}")
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
    outcome = "as expected" if summary["ok"] else "NOT as expected: " + "; ".join(summary["failed"])
    print(f"  outcome          {outcome}")
