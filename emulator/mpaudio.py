"""The meeting's audio as the MP sends it: one tick every 20 ms for all participants of a link.

Per tick k (media time k * 20 ms from the link's media start), each participant's next 20 ms
16 kHz frame is taken from its seeded voice, zeroed outside its talk spurts (a muted participant
is silent too). Audible participants (inside a spurt) are ordered loudest first by the frame's
energy. Then:
- mixed mode: one stream carries the saturated sum of everyone, encoded by one CELT encoder,
  with CSRC = the audible MSIs loudest first (at most 15; empty when nobody talks). It sends
  every tick;
- unmixed mode: up to four streams, each carrying one speaker (speakers.StreamAssigner: sticky),
  encoded by the stream's own encoder, with CSRC = [that speaker]. A stream with nobody on it
  sends nothing.
While a DTMF tone plays, the first stream sends its event packets instead of audio.

Capture time. The emulated participants' clock is time.monotonic(): frame k's first sample is
captured at start + k * 20 ms, and the frame goes out when it is complete, at start + (k+1) * 20 ms.
Every packet carries that capture time as abs-capture-time (NTP UQ32.32 of the monotonic seconds),
so a receiver maps original_sender_timestamp / 1e7 straight back onto time.monotonic().

Light mode (a load generator): each participant's packets come from a 10 s loop encoded once per
seed (a module-level cache), no PCM is generated or recorded, and the mix of several audible
participants is approximated by the loudest one's packet (its CSRC list is still right).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from emulator.analysis import Recording
from emulator.codec import ParticipantEncoder
from emulator.dtmf import DtmfSender, name_of
from emulator.participant import ParticipantScript
from emulator.rtpsend import RtpStream, SendRtp
from emulator.signal import FRAME_SAMPLES, RATE_HZ, VoiceLikeSignal
from emulator.sources import AudioSource, LiveAudio
from emulator.speakers import (
    MAX_CSRC,
    DominantSpeaker,
    StreamAssigner,
    energy,
    loudest_first,
    mix,
)

logger = logging.getLogger(__name__)

FRAME_SECONDS = FRAME_SAMPLES / RATE_HZ
LOOP_FRAMES = 500  # light mode: a 10 s loop per seed
MAX_LAG_TICKS = 50  # more than 1 s behind: skip ahead rather than burst
SPEAKING_LOG_TICKS = 3 * 60 * 50  # the last 3 minutes
RECORD_FRAMES = 10 * 60 * 50  # recordings keep the last 10 minutes
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)
# A live microphone frame is audible above this energy (sum of squares over 20 ms): an RMS of
# about 100 (-50 dBFS), well above a fake device's or a muted track's noise floor.
LIVE_AUDIBLE_ENERGY = FRAME_SAMPLES * 100.0**2


@dataclass(frozen=True, slots=True)
class SpeakingTick:
    """Ground truth for one tick: who was audible and what each audio m-line's packet carried."""

    tick: int
    capture_time: float  # time.monotonic() seconds of the frame's first sample
    audible: tuple[int, ...]  # MSIs inside a talk spurt, loudest first
    # Per audio m-line, the CSRC list of the audio packet sent; None: no audio packet (an idle
    # unmixed stream, or a DTMF event packet instead).
    streams: tuple[tuple[int, ...] | None, ...]


@dataclass(frozen=True)
class LoopedVoice:
    payloads: tuple[bytes, ...]
    energies: tuple[float, ...]


@functools.cache
def looped_voice(seed: int) -> LoopedVoice:
    """A participant's first 10 s, encoded once per process (light mode)."""
    signal, encoder = VoiceLikeSignal(seed), ParticipantEncoder()
    payloads: list[bytes] = []
    energies: list[float] = []
    while len(payloads) < LOOP_FRAMES:
        pcm = signal.next_frame()
        payload = encoder.encode(pcm)
        if payload is not None:
            payloads.append(payload)
            energies.append(energy(pcm))
    return LoopedVoice(tuple(payloads), tuple(energies))


@functools.cache
def silence_payload() -> bytes:
    encoder = ParticipantEncoder()
    while (payload := encoder.encode(SILENCE)) is None:
        pass
    return payload


class Voice:
    """One participant's microphone."""

    def __init__(self, script: ParticipantScript, light: bool) -> None:
        self.script = script
        self.muted = False
        # Light mode plays every participant from its seed's pre-encoded loop, whatever its voice.
        self.source: AudioSource | None = None if light else script.audio_source()
        self._loop = looped_voice(script.seed) if light else None
        self.pcm: npt.NDArray[np.int16] = SILENCE
        self.energy = 0.0
        self.talking = False

    def next(self, tick: int, media_seconds: float) -> None:
        """Advance to this tick's frame."""
        if self.source is not None:
            pcm = self.source.next_frame()  # the voice runs on while the participant is quiet
            if self.source.by_energy:
                # A live or silent microphone is audible when it carries sound.
                self.talking = not self.muted and energy(pcm) > LIVE_AUDIBLE_ENERGY
            else:
                self.talking = not self.muted and self.script.talking(media_seconds)
            self.pcm = pcm if self.talking else SILENCE
            self.energy = energy(pcm) if self.talking else 0.0
            return
        self.talking = not self.muted and self.script.talking(media_seconds)
        if self._loop is not None:
            self.energy = self._loop.energies[tick % LOOP_FRAMES] if self.talking else 0.0

    def close(self) -> None:
        """Stop listening to a live feed (a link that ends must not keep receiving it)."""
        source = self.source
        if isinstance(source, LiveAudio) and self.script.live is not None:
            self.script.live.unsubscribe(source)

    def payload(self, tick: int) -> bytes:
        """Light mode: this tick's packet from the loop."""
        assert self._loop is not None
        return self._loop.payloads[tick % LOOP_FRAMES]


class MeetingAudio:
    """The tick loop of one link: builds every audio packet and keeps the ground truth."""

    def __init__(
        self,
        streams: Sequence[RtpStream],
        scripts: Sequence[ParticipantScript],
        unmixed: bool,
        light: bool,
        send_rtp: SendRtp,
        on_dominant: Callable[[int, list[int]], None],
    ) -> None:
        self.streams = list(streams)
        self.unmixed = unmixed
        self.light = light
        self._send_rtp = send_rtp
        self._on_dominant = on_dominant
        self.voices: list[Voice] = []
        self.first_msi = scripts[0].msi if scripts else None
        self.sent = Recording(max_frames=RECORD_FRAMES)
        self.sent_by_msi: dict[int, Recording] = {}
        self.speaking_log: deque[SpeakingTick] = deque(maxlen=SPEAKING_LOG_TICKS)
        self.dtmf = DtmfSender()
        self.dtmf_sent: list[tuple[str, float]] = []  # (tone, time its first packet went out)
        self.dominant = DominantSpeaker()
        self.start: float | None = None
        self.ticks = 0
        self.skipped_ticks = 0
        self.send_errors = 0
        self._assigner = StreamAssigner(len(self.streams))
        self._stream_speakers: list[int | None] = [None] * len(self.streams)
        self._encoders = [] if light else [ParticipantEncoder() for _ in self.streams]
        for script in scripts:
            self.add(script)

    def add(self, script: ParticipantScript) -> None:
        if any(v.script.msi == script.msi for v in self.voices):
            return
        self.voices.append(Voice(script, self.light))
        if not self.light:
            self.sent_by_msi.setdefault(script.msi, Recording(max_frames=RECORD_FRAMES))

    def remove(self, msi: int) -> None:
        for voice in self.voices:
            if voice.script.msi == msi:
                voice.close()
        self.voices = [v for v in self.voices if v.script.msi != msi]
        self.dominant.forget(msi)

    def close(self) -> None:
        for voice in self.voices:
            voice.close()

    def voice(self, msi: int) -> Voice | None:
        return next((v for v in self.voices if v.script.msi == msi), None)

    async def run(self) -> None:
        """Tick every 20 ms on time.monotonic() until cancelled. Pacing a real-time source by the
        clock is the one place a sleep belongs; a late loop catches up in a burst, and one more
        than a second late skips the lost ticks (their RTP timestamps pass unused)."""
        start = self.start = self.start or time.monotonic()
        tick = 0
        while True:
            now = time.monotonic()
            due = start + (tick + 1) * FRAME_SECONDS
            if due > now:
                await asyncio.sleep(due - now)
                continue
            behind = int((now - due) / FRAME_SECONDS)
            if behind > MAX_LAG_TICKS:
                tick += behind
                self.skipped_ticks += behind
                continue
            for data in self.tick(tick, start + tick * FRAME_SECONDS, now):
                try:
                    await self._send_rtp(data)
                except ConnectionError:
                    self.send_errors += 1  # not connected (yet, or any more)
            tick += 1

    def tick(self, tick: int, capture: float, now: float) -> list[bytes]:
        """Tick `tick`: its frames, captured from `capture` on, go out at `now`."""
        self.ticks += 1
        media_seconds = tick * FRAME_SECONDS
        voices = self.voices
        for voice in voices:
            voice.next(tick, media_seconds)
            if not self.light:
                self.sent_by_msi[voice.script.msi].add(capture, voice.pcm)
        talking = [v for v in voices if v.talking]
        audible = loudest_first([(v.script.msi, v.energy) for v in talking])
        if self.dominant.update(audible):
            self._on_dominant(self.dominant.current, list(self.dominant.history))

        packets: list[bytes] = []
        first = self.streams[0]
        event = self.dtmf.slot(tick) if self.dtmf.busy else None
        if event is not None:
            assert first.event_payload_type is not None
            packets.append(
                first.packet(
                    event.payload,
                    tick,
                    capture,
                    payload_type=first.event_payload_type,
                    marker=event.marker,
                    timestamp_tick=event.start_tick,
                )
            )
            first.idle = True  # the audio after the tone starts a talkspurt (M bit)
            if event.marker:
                self.dtmf_sent.append((name_of(event.event), now))
                del self.dtmf_sent[:-1000]
            self._stream_speakers[0] = None
        if self.unmixed:
            entries = self._unmixed(tick, capture, now, audible, event is not None, packets)
        elif event is not None:
            entries = [None]
        else:
            entries = [self._mixed(tick, capture, now, talking, audible, packets)]
        self.speaking_log.append(SpeakingTick(tick, capture, audible, tuple(entries)))
        return packets

    def _mixed(
        self,
        tick: int,
        capture: float,
        now: float,
        talking: list[Voice],
        audible: tuple[int, ...],
        packets: list[bytes],
    ) -> tuple[int, ...] | None:
        csrc = audible[:MAX_CSRC]
        if self.light:
            loudest = next((v for v in talking if audible and v.script.msi == audible[0]), None)
            payload: bytes | None = (
                loudest.payload(tick) if loudest is not None else silence_payload()
            )
        else:
            payload = self._encoders[0].encode(mix([v.pcm for v in talking], FRAME_SAMPLES))
        if payload is None:
            return None
        packets.append(self.streams[0].packet(payload, tick, capture, csrc))
        if not self.light and self.first_msi is not None:
            first = self.voice(self.first_msi)
            if first is not None:
                self.sent.add(now, first.pcm)
        return csrc

    def _unmixed(
        self,
        tick: int,
        capture: float,
        now: float,
        audible: tuple[int, ...],
        tone: bool,
        packets: list[bytes],
    ) -> list[tuple[int, ...] | None]:
        entries: list[tuple[int, ...] | None] = []
        for i, msi in enumerate(self._assigner.update(audible)):
            stream = self.streams[i]
            voice = self.voice(msi) if msi is not None else None
            if (i == 0 and tone) or voice is None:
                if not (i == 0 and tone):
                    stream.idle = True
                    self._stream_speakers[i] = None
                entries.append(None)
                continue
            if self.light:
                payload: bytes | None = voice.payload(tick)
            else:
                payload = self._encoders[i].encode(voice.pcm)
            if payload is None:
                entries.append(None)
                continue
            new_speaker = self._stream_speakers[i] != msi
            self._stream_speakers[i] = msi
            csrc = (voice.script.msi,)
            packets.append(
                stream.packet(payload, tick, capture, csrc, marker=stream.idle or new_speaker)
            )
            if msi == self.first_msi and not self.light:
                self.sent.add(now, voice.pcm)
            entries.append(csrc)
        return entries
