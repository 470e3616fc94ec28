"""Voice activity: webrtcvad per stream, an energy floor, start/stop hysteresis, speech
segments per MSI, and a dominant speaker (hot path, sync, numpy).

Per 20 ms frame a stream is *voiced* when its RMS is above the energy floor and webrtcvad
(the WebRTC GMM detector, aggressiveness `mode` 0..3) says speech. Frames below the floor skip
webrtcvad: digital silence and line noise cost one dot product.

A speaker's segment opens after `start_ms` of consecutive voiced frames and is back-dated to
the first of them, so a short click does not open one but onsets stay exact to the frame. It
closes after `stop_ms` of unvoiced frames and ends where the last voiced frame ended, so the
hangover delays the event, never the reported offset. Talk has pauses (breaths, stops between
words) well under the default 400 ms; a longer `stop_ms` merges sentences into one segment.

Mixed audio (one stream carrying everyone): the stream's own gate is reported under
events.MIXED, and a speaker's gate is fed "mixed is voiced and the speaker is in the frame's
active speakers" (the RTP CSRC list, RFC 3550 section 6.1 mixer semantics). Unmixed audio: each
speaker's buffer has its own detector; a speaker absent from a frame is unvoiced in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import webrtcvad

from media.clock import TICKS_PER_SECOND
from media.frames import AUDIO_FRAME_MS, AUDIO_SAMPLE_RATE_HZ, AudioFrame, Pcm
from media.pipeline.events import (
    MIXED,
    DominantSpeakerChanged,
    PipelineEvent,
    SpeechStarted,
    SpeechStopped,
    frame_time,
)

FRAME_TICKS = AUDIO_FRAME_MS * TICKS_PER_SECOND // 1000
FULL_SCALE = 32768.0


@dataclass(frozen=True, slots=True)
class VadSettings:
    """`BOT_VAD_*` settings. Raises ValueError naming a bad value."""

    mode: int = 2  # webrtcvad aggressiveness: 0 least, 3 most eager to call audio non-speech
    start_ms: int = 60  # voiced audio needed to open a segment
    stop_ms: int = 400  # unvoiced audio needed to close one
    energy_floor_dbfs: float = -50.0  # RMS below this is never speech
    dominant_hold_ms: int = 300  # a new dominant speaker must lead this long

    def __post_init__(self) -> None:
        if self.mode not in (0, 1, 2, 3):
            raise ValueError(f"VAD mode must be 0, 1, 2 or 3, got {self.mode!r}")
        for name in ("start_ms", "stop_ms", "dominant_hold_ms"):
            value = getattr(self, name)
            if value < AUDIO_FRAME_MS or value % AUDIO_FRAME_MS:
                raise ValueError(
                    f"VAD {name} must be a positive multiple of {AUDIO_FRAME_MS} ms, got {value!r}"
                )
        if not -120.0 <= self.energy_floor_dbfs <= 0.0:
            raise ValueError(
                f"VAD energy_floor_dbfs must be in [-120, 0], got {self.energy_floor_dbfs!r}"
            )

    @property
    def energy_floor(self) -> float:
        """The floor as a sum of squares over one frame (what voiced() compares against)."""
        rms = FULL_SCALE * 10 ** (self.energy_floor_dbfs / 20)
        return rms * rms * (AUDIO_SAMPLE_RATE_HZ * AUDIO_FRAME_MS // 1000)


def frame_energy(pcm: Pcm) -> float:
    """Sum of squares, in float32 (int16 squares overflow int32 sums within one frame).
    np.vdot, not np.dot: np.dot on float32 goes to BLAS and gives the GIL up, and getting it
    back behind a busy thread cost 100-165 us instead of 0.8 (bench/pipeline.py probe)."""
    x = pcm.astype(np.float32)
    return float(np.vdot(x, x))


def dbfs(energy: float, samples: int = AUDIO_SAMPLE_RATE_HZ * AUDIO_FRAME_MS // 1000) -> float:
    if energy <= 0:
        return -math.inf
    return 20 * math.log10(math.sqrt(energy / samples) / FULL_SCALE)


class Detector:
    """One stream's per-frame voiced/unvoiced decision (webrtcvad keeps state per stream)."""

    __slots__ = ("_floor", "_vad", "energy")

    def __init__(self, settings: VadSettings) -> None:
        self._vad = webrtcvad.Vad(settings.mode)
        self._floor = settings.energy_floor
        self.energy = 0.0  # the last frame's, for dominant-speaker ranking

    def voiced(self, pcm: Pcm) -> bool:
        energy = self.energy = frame_energy(pcm)
        if energy < self._floor:
            return False
        return bool(self._vad.is_speech(pcm.data, AUDIO_SAMPLE_RATE_HZ))


STARTED = 1
STOPPED = 2


class SpeechGate:
    """Start/stop hysteresis over voiced flags. update() returns 0, STARTED or STOPPED; the
    segment's bounds are then in `start` and `end` (100 ns ticks)."""

    __slots__ = ("_start_frames", "_stop_frames", "_run", "_quiet", "speaking", "start", "end")

    def __init__(self, start_ms: int, stop_ms: int) -> None:
        self._start_frames = start_ms // AUDIO_FRAME_MS
        self._stop_frames = stop_ms // AUDIO_FRAME_MS
        self._run = 0  # consecutive voiced frames while not speaking
        self._quiet = 0  # consecutive unvoiced frames while speaking
        self.speaking = False
        self.start = 0
        self.end = 0

    def update(self, voiced: bool, t: int) -> int:
        if not self.speaking:
            if not voiced:
                self._run = 0
                return 0
            if self._run == 0:
                self.start = t
            self._run += 1
            if self._run < self._start_frames:
                return 0
            self.speaking = True
            self._quiet = 0
            self.end = t + FRAME_TICKS
            return STARTED
        if voiced:
            self._quiet = 0
            self.end = t + FRAME_TICKS
            return 0
        self._quiet += 1
        if self._quiet < self._stop_frames:
            return 0
        self.speaking = False
        self._run = 0
        return STOPPED

    def close(self) -> int:
        """End an open segment now (the stream went away); STOPPED if one was open."""
        if not self.speaking:
            return 0
        self.speaking = False
        self._run = 0
        return STOPPED


class _Speaker:
    __slots__ = ("detector", "gate", "level", "seen", "voiced")

    def __init__(self, settings: VadSettings, with_detector: bool) -> None:
        self.detector = Detector(settings) if with_detector else None
        self.gate = SpeechGate(settings.start_ms, settings.stop_ms)
        self.level = 0.0  # smoothed energy while speaking (dominant-speaker ranking)
        self.seen = 0  # frames since this speaker last had audio (unmixed) or a CSRC (mixed)
        self.voiced = False  # in the last frame


LEVEL_SMOOTHING = 0.2  # one-pole smoothing per frame: about 100 ms to follow a change
FORGET_FRAMES = 500  # a speaker not heard for 10 s is dropped from the table (bounded state)


class SessionVad:
    """Every stream of one session: call update(frame, out) once per received frame; events
    are appended to `out` (the hot loop's per-tick batch)."""

    def __init__(self, session_id: str, settings: VadSettings) -> None:
        self.session_id = session_id
        self.settings = settings
        self._mixed = _Speaker(settings, with_detector=True)
        self._speakers: dict[int, _Speaker] = {}
        self._hold_frames = settings.dominant_hold_ms // AUDIO_FRAME_MS
        self.dominant: int | None = None
        self._candidate: int | None = None
        self._lead = 0
        self._last_t: int | None = None

    @property
    def speaking(self) -> tuple[int, ...]:
        """MSIs inside a speech segment now."""
        return tuple(msi for msi, s in self._speakers.items() if s.gate.speaking)

    def idle(self, out: list[PipelineEvent]) -> None:
        """A tick with no frame: the stream is silent. Unmixed audio sends nothing while
        nobody talks, so silence must be inferred from time passing, or a segment would only
        end when its speaker talks again (one tick is one 20 ms frame on the hot loop's grid)."""
        if self._last_t is None:
            return
        t = self._last_t = self._last_t + FRAME_TICKS
        self._gate(MIXED, self._mixed.gate, False, t, out)
        for msi, speaker in list(self._speakers.items()):
            self._step(msi, speaker, False, t, 0.0, out)
        self._dominant(t, out)

    def update(self, frame: AudioFrame, out: list[PipelineEvent]) -> None:
        t = frame_time(frame.timestamp, frame.original_sender_timestamp)
        self._last_t = t
        speakers = self._speakers
        if frame.unmixed:
            present = set()
            for buffer in frame.unmixed:
                speaker = speakers.get(buffer.msi)
                if speaker is None or speaker.detector is None:
                    speaker = speakers[buffer.msi] = _Speaker(self.settings, with_detector=True)
                present.add(buffer.msi)
                assert speaker.detector is not None
                voiced = speaker.detector.voiced(buffer.pcm)
                bt = frame_time(t, buffer.original_sender_timestamp)
                self._step(buffer.msi, speaker, voiced, bt, speaker.detector.energy, out)
            for msi, speaker in list(speakers.items()):
                if msi not in present:
                    self._step(msi, speaker, False, t, 0.0, out)
        else:
            mixed = self._mixed
            assert mixed.detector is not None
            voiced = mixed.detector.voiced(frame.pcm)
            energy = mixed.detector.energy
            self._gate(MIXED, mixed.gate, voiced, t, out)
            active = frame.active_speakers
            for msi in active:
                if msi not in speakers:
                    speakers[msi] = _Speaker(self.settings, with_detector=False)
            for msi, speaker in list(speakers.items()):
                here = msi in active
                self._step(msi, speaker, voiced and here, t, energy if here else 0.0, out)
        self._dominant(t, out)

    def _step(
        self,
        msi: int,
        speaker: _Speaker,
        voiced: bool,
        t: int,
        energy: float,
        out: list[PipelineEvent],
    ) -> None:
        speaker.seen = 0 if energy > 0.0 else speaker.seen + 1
        speaker.voiced = voiced
        self._gate(msi, speaker.gate, voiced, t, out)
        if speaker.gate.speaking:
            speaker.level += LEVEL_SMOOTHING * (energy - speaker.level)
        else:
            speaker.level = 0.0
            if speaker.seen > FORGET_FRAMES:
                del self._speakers[msi]

    def _gate(
        self, msi: int, gate: SpeechGate, voiced: bool, t: int, out: list[PipelineEvent]
    ) -> None:
        change = gate.update(voiced, t)
        if change == STARTED:
            out.append(SpeechStarted(self.session_id, msi, gate.start))
        elif change == STOPPED:
            out.append(SpeechStopped(self.session_id, msi, gate.start, gate.end))

    def _dominant(self, t: int, out: list[PipelineEvent]) -> None:
        # The loudest speaker in a segment leads; the current one keeps the floor on ties and
        # until another has led for dominant_hold_ms (a dominant speaker that flips on every
        # syllable is useless for layouts and captions).
        best: int | None = None
        best_level = -1.0
        for msi, speaker in self._speakers.items():
            if not speaker.gate.speaking:
                continue
            level = speaker.level
            if level > best_level or (level == best_level and msi == self.dominant):
                best, best_level = msi, level
        if best == self.dominant:
            self._candidate, self._lead = None, 0
            return
        if best != self._candidate:
            self._candidate, self._lead = best, 0
        # Only frames in which the challenger really speaks count towards its lead: the
        # stop hysteresis keeps a finished interjection "speaking" for a while.
        if best is None or self._speakers[best].voiced:
            self._lead += 1
        if self._lead >= self._hold_frames or self.dominant is None:
            self.dominant = best
            self._candidate, self._lead = None, 0
            out.append(DominantSpeakerChanged(self.session_id, best, t))

    def close(self, out: list[PipelineEvent]) -> None:
        """Close open segments (the session ends)."""
        for msi, speaker in [(MIXED, self._mixed), *self._speakers.items()]:
            if speaker.gate.close() == STOPPED:
                out.append(
                    SpeechStopped(self.session_id, msi, speaker.gate.start, speaker.gate.end)
                )
