"""Every reduction over int16 samples, fed full-scale audio and checked against a wide reference.

numpy keeps int16 arithmetic in int16: np.dot, x @ x and np.square wrap (32767**2 and
(-32768)**2 do not fit), a sum of two full-scale frames wraps, and np.abs(-32768) is -32768.
So each function that turns samples into an energy, a level, a mix or a correlation is run
here on frames of -32768, of +32767, of alternating signs, and on a full-scale sine, and its
result compared with the same computation done in Python ints or float64 in the test.
"""

from __future__ import annotations

import time
import wave
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from emulator import browsermedia, speakers
from emulator import sources as emulator_sources
from emulator.analysis import Recording, echo_report, frame_delays
from media import wav as media_wav
from media.frames import AUDIO_FRAME_SAMPLES, AudioFrame, Pcm, UnmixedAudioBuffer
from media.pipeline.examples import GainProcessor
from media.pipeline.mixer import mix, mix_minus
from media.pipeline.replay import MEDIA, load, save_frames
from media.pipeline.vad import Detector, VadSettings, dbfs, frame_energy
from media.unmixed import UnmixedAssembler

N = AUDIO_FRAME_SAMPLES
_n = np.arange(N)

# Full-scale frames: the rails, alternating signs (each square is ~2**30, so 320 of them are
# far beyond int16 and int32), and a full-scale sine (whose RMS is 3 dB below full scale).
FULL_SCALE: dict[str, Pcm] = {
    "min": np.full(N, -32768, np.int16),
    "max": np.full(N, 32767, np.int16),
    "alternating": np.where(_n % 2 == 0, 32767, -32767).astype(np.int16),
    "alternating-min": np.where(_n % 2 == 0, 32767, -32768).astype(np.int16),
    "sine": np.rint(32767 * np.sin(2 * np.pi * 1000 * _n / 16_000)).astype(np.int16),
    "random": np.random.default_rng(7).integers(-32768, 32768, N, dtype=np.int16),
}
CASES = sorted(FULL_SCALE)


def exact_energy(pcm: Pcm) -> int:
    """Sum of squares in Python ints: no overflow, no rounding."""
    return sum(int(v) * int(v) for v in pcm.tolist())


def reference_dbfs(pcm: Pcm) -> float:
    return float(20 * np.log10(np.sqrt(exact_energy(pcm) / len(pcm)) / 32768.0))


def reference_mix(frames: list[Pcm], gains: list[float] | None = None) -> npt.NDArray[np.int64]:
    """Sum in int64 (float64 with gains, rounded to nearest), then clipped to int16's range."""
    if gains is None:
        total = np.sum([f.astype(np.int64) for f in frames], axis=0)
    else:
        wide = [f.astype(np.float64) * g for f, g in zip(frames, gains, strict=True)]
        total = np.rint(np.sum(wide, axis=0))
    return np.clip(total, -32768, 32767).astype(np.int64)


def frames_of(*names: str) -> list[Pcm]:
    return [FULL_SCALE[name] for name in names]


# VAD: energy and dBFS -----------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_vad_frame_energy_and_dbfs_of_full_scale_frames(name: str) -> None:
    pcm = FULL_SCALE[name]
    # float32 accumulation (vad.py, for the GIL): a relative error of a few 1e-8, never a wrap.
    assert frame_energy(pcm) == pytest.approx(exact_energy(pcm), rel=1e-6)
    assert dbfs(frame_energy(pcm)) == pytest.approx(reference_dbfs(pcm), abs=1e-5)


def test_vad_full_scale_levels_are_where_they_belong() -> None:
    assert dbfs(frame_energy(FULL_SCALE["min"])) == 0.0  # 320 * 2**30 is exact in float32
    assert dbfs(frame_energy(FULL_SCALE["sine"])) == pytest.approx(-3.0103, abs=1e-3)


@pytest.mark.parametrize("name", CASES)
def test_vad_detector_keeps_the_full_scale_energy(name: str) -> None:
    # The detector's energy is the dominant-speaker ranking's input and gates webrtcvad.
    detector = Detector(VadSettings())
    detector.voiced(FULL_SCALE[name])
    assert detector.energy == pytest.approx(exact_energy(FULL_SCALE[name]), rel=1e-6)
    assert detector.energy > VadSettings().energy_floor


# Mixer ---------------------------------------------------------------------------------------

MIXES = [
    ("min", "min"),
    ("max", "max"),
    ("max", "min"),
    ("alternating", "alternating-min", "sine"),
    ("sine", "random", "min", "max"),
    tuple(CASES) * 2,  # 12 sources: the stacked (N, 320) path, not row by row
    ("min",) * 16 + ("max",) * 15,  # 31 rails summing to -32783: saturates, must not wrap
]


@pytest.mark.parametrize("names", MIXES, ids=lambda names: f"{len(names)}-sources")
def test_mixer_mix_of_full_scale_frames(names: tuple[str, ...]) -> None:
    frames = frames_of(*names)
    assert np.array_equal(mix(frames), reference_mix(frames))
    assert np.array_equal(mix(np.stack(frames)), reference_mix(frames))


@pytest.mark.parametrize("names", MIXES, ids=lambda names: f"{len(names)}-sources")
def test_mixer_mix_minus_of_full_scale_frames(names: tuple[str, ...]) -> None:
    frames = frames_of(*names)
    minus = mix_minus(frames)
    for i in range(len(frames)):
        assert np.array_equal(minus[i], reference_mix(frames[:i] + frames[i + 1 :])), i


@pytest.mark.parametrize("names", MIXES, ids=lambda names: f"{len(names)}-sources")
def test_mixer_gained_mix_of_full_scale_frames(names: tuple[str, ...]) -> None:
    frames = frames_of(*names)
    gains = [(-1.0, 0.5, 2.0, 1.0)[i % 4] for i in range(len(frames))]
    got = mix(frames, gains).astype(np.int64)
    # float32 products: a sum landing on a .5 may round either way, nothing more.
    assert np.abs(got - reference_mix(frames, gains)).max() <= 1
    minus = mix_minus(frames, gains).astype(np.int64)
    for i in range(len(frames)):
        expected = reference_mix(frames[:i] + frames[i + 1 :], gains[:i] + gains[i + 1 :])
        assert np.abs(minus[i] - expected).max() <= 1, i


def test_mixer_negating_minus_full_scale_saturates() -> None:
    # -(-32768) is 32768, one past int16: an int16 negation gives -32768 back.
    assert (mix([FULL_SCALE["min"]], [-1.0]) == 32767).all()
    assert (mix(np.stack([FULL_SCALE["min"]] * 9), [-1.0] * 9) == 32767).all()


# Unmixed audio: the frame's pcm is the speakers' sum ----------------------------------------


def test_unmixed_assembler_sums_full_scale_speakers_without_wrapping() -> None:
    assembler = UnmixedAssembler(4)
    rounds = [
        ("min", "min", "min", "min"),
        ("max", "max", "max", "max"),
        ("max", "min", "alternating", "sine"),
        ("random", "alternating-min", "max", "min"),
    ]
    out: list[AudioFrame] = []
    for r, names in enumerate(rounds):
        now = r * 0.02
        for stream, name in enumerate(names):
            buffer = UnmixedAudioBuffer(100 + stream, FULL_SCALE[name], r)
            out.extend(assembler.add(stream, buffer, now))
    out.extend(assembler.expire(10.0))
    assert sum(len(f.unmixed) for f in out) == 16 and max(len(f.unmixed) for f in out) == 4
    for frame in out:
        assert np.array_equal(frame.pcm, reference_mix([b.pcm for b in frame.unmixed]))


def test_frames_fixture_stores_and_rebuilds_the_saturated_sum(tmp_path: Path) -> None:
    # An unmixed fixture stores only the buffers when the frame's pcm is their saturated sum
    # (replay.py rebuilds it at load); a wrapping sum would disagree and store pcm too.
    frames = []
    for i, names in enumerate([("min", "min"), ("max", "max", "max"), ("max", "min", "sine")]):
        buffers = tuple(UnmixedAudioBuffer(7 + k, FULL_SCALE[n], i) for k, n in enumerate(names))
        pcm = reference_mix([b.pcm for b in buffers]).astype(np.int16)
        frames.append(AudioFrame(pcm, i * 200_000, tuple(b.msi for b in buffers), unmixed=buffers))
    save_frames(tmp_path, frames, "test")
    with np.load(tmp_path / MEDIA) as stored:
        assert "pcm" not in stored.files
    loaded = load(tmp_path).frames
    for got, sent in zip(loaded, frames, strict=True):
        assert np.array_equal(got.pcm, sent.pcm)


# Gain ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gain_db", [-20.0, -6.0, 0.0, 6.0, 20.0])
@pytest.mark.parametrize("name", CASES)
def test_gain_processor_on_full_scale_frames(name: str, gain_db: float) -> None:
    pcm = FULL_SCALE[name]
    out = GainProcessor(gain_db).process(AudioFrame(pcm, 0)).pcm.astype(np.int64)
    factor = float(np.float32(10 ** (gain_db / 20)))  # the processor's own float32 gain
    expected = np.clip(np.rint(pcm.astype(np.float64) * factor), -32768, 32767)
    assert np.abs(out - expected).max() <= 1
    rails = np.abs(expected) >= 32767
    assert np.array_equal(out[rails], expected[rails])  # saturated exactly, never wrapped


# WAV reading: channels averaged, 8/16/32-bit scaled -----------------------------------------

READERS: dict[str, Callable[[Path], Pcm]] = {
    "media.wav": media_wav.read_wav_16k,
    "emulator.sources": emulator_sources.read_wav_16k,
}


def write_wav(path: Path, width: int, interleaved: npt.NDArray[np.generic], channels: int) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(16_000)  # no resampling: only the downmix and the scaling are tested
        out.writeframes(interleaved.tobytes())


@pytest.mark.parametrize("reader", sorted(READERS))
def test_wav_downmix_of_full_scale_stereo(tmp_path: Path, reader: str) -> None:
    left = np.concatenate([FULL_SCALE[name] for name in CASES])
    right = np.concatenate([FULL_SCALE[name] for name in reversed(CASES)])
    path = tmp_path / "stereo.wav"
    write_wav(path, 2, np.stack([left, right], axis=1).astype("<i2"), 2)
    expected = np.round((left.astype(np.float64) + right.astype(np.float64)) / 2)
    assert np.array_equal(READERS[reader](path), expected)
    same = tmp_path / "same.wav"
    write_wav(same, 2, np.stack([left, left], axis=1).astype("<i2"), 2)
    assert np.array_equal(READERS[reader](same), left)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_wav_8_and_32_bit_rails(tmp_path: Path, reader: str) -> None:
    eight = tmp_path / "u8.wav"
    write_wav(eight, 1, np.array([0, 255, 128, 0, 255], np.uint8), 1)
    assert READERS[reader](eight).tolist() == [-32768, 32512, 0, -32768, 32512]
    wide = tmp_path / "s32.wav"
    write_wav(wide, 4, np.array([-(2**31), 2**31 - 1, 0], "<i4"), 1)
    # 2**31 - 1 scales to 32767.99998, which rounds to 32768: clipped, not wrapped.
    assert READERS[reader](wide).tolist() == [-32768, 32767, 0]


# Emulator: the MP's loudness order and mix ---------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_emulator_energy_is_exact_on_full_scale_frames(name: str) -> None:
    # float64 holds every partial sum of 320 squares below 2**31 exactly.
    assert speakers.energy(FULL_SCALE[name]) == exact_energy(FULL_SCALE[name])


def test_emulator_loudest_first_ranks_full_scale_first() -> None:
    quiet = (FULL_SCALE["sine"] // 100).astype(np.int16)
    audible = [(1, speakers.energy(quiet)), (2, speakers.energy(FULL_SCALE["min"]))]
    audible.append((3, speakers.energy(FULL_SCALE["alternating"])))
    assert speakers.loudest_first(audible) == (2, 3, 1)


@pytest.mark.parametrize("names", MIXES, ids=lambda names: f"{len(names)}-sources")
def test_emulator_mix_of_full_scale_frames(names: tuple[str, ...]) -> None:
    frames = frames_of(*names)
    assert np.array_equal(speakers.mix(frames, N), reference_mix(frames))


# Emulator: the browser page's mix of the bots and its speaking indicator ----------------------


def stereo_frame(pcm: Pcm, index: int) -> av.AudioFrame:
    """A 20 ms 48 kHz stereo frame whose samples (both channels) are `pcm` repeated 3 times."""
    both = np.repeat(np.tile(pcm, 3), 2).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(both, format="s16", layout="stereo")
    frame.sample_rate = browsermedia.OUT_RATE_HZ
    frame.pts = index * browsermedia.OUT_FRAME_SAMPLES
    return frame


@pytest.mark.parametrize("name", CASES)
async def test_browser_audio_hears_a_full_scale_bot(name: str) -> None:
    audio = browsermedia.BotAudio()
    before = time.monotonic()
    audio.push("bot", stereo_frame(FULL_SCALE[name], 0))
    rms = float(np.sqrt(exact_energy(FULL_SCALE[name]) / N))
    assert rms > browsermedia.BOT_AUDIBLE_RMS
    assert audio.speaking("bot", before)
    audio.stop()


async def test_browser_audio_mixes_full_scale_bots_without_wrapping() -> None:
    audio = browsermedia.BotAudio()
    bots = {"a": ("min", "max"), "b": ("min", "min"), "c": ("alternating-min", "sine")}
    for key, names in bots.items():
        for i, name in enumerate(names):
            audio.push(key, stereo_frame(FULL_SCALE[name], i))
    for i in range(2):
        got = (await audio.recv()).to_ndarray().reshape(-1)
        mixed = [np.repeat(np.tile(FULL_SCALE[names[i]], 3), 2) for names in bots.values()]
        assert np.array_equal(got, reference_mix(mixed)), i
    audio.stop()


# Emulator: the echo measurement ---------------------------------------------------------------


def full_scale_voice(frames: int) -> list[Pcm]:
    rng = np.random.default_rng(3)
    return [FULL_SCALE[CASES[int(k)]][rng.permutation(N)] for k in rng.integers(0, 6, frames)]


def test_echo_report_of_full_scale_audio() -> None:
    said = full_scale_voice(100)
    sent, heard = Recording(), Recording()
    for i, pcm in enumerate(said):
        sent.add(10.0 + i * 0.02, pcm)
        heard.add(10.0 + (i + 3) * 0.02, pcm)  # heard back 60 ms later, unchanged
    report = echo_report(sent, heard)
    assert report.delay_ms == 60.0
    assert report.correlation == pytest.approx(1.0, abs=1e-9)


def test_echo_report_correlation_matches_a_float64_reference() -> None:
    # Heard: the sent audio plus a full-scale disturbance on every fourth frame, saturated.
    said = full_scale_voice(60)
    noise = full_scale_voice(60)[::-1]
    got = [
        reference_mix([pcm, noise[i]]).astype(np.int16) if i % 4 == 0 else pcm
        for i, pcm in enumerate(said)
    ]
    sent, heard = Recording(), Recording()
    for i in range(60):
        sent.add(10.0 + i * 0.02, said[i])
        heard.add(10.0 + i * 0.02, got[i])
    a = np.concatenate(got).astype(np.float64)
    b = np.concatenate(said).astype(np.float64)
    expected = float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))
    report = echo_report(sent, heard)
    assert report.delay_ms == 0.0
    assert report.correlation == pytest.approx(expected, rel=1e-9)
    assert 0.5 < expected < 0.95  # a real disturbance, not a trivially perfect match


def test_frame_delays_of_full_scale_audio() -> None:
    said = full_scale_voice(80)
    sent, received = Recording(), Recording()
    for i, pcm in enumerate(said):
        sent.add(5.0 + i * 0.02, pcm)
    for i, pcm in enumerate(said[:-2]):
        received.add(5.0 + (i + 2) * 0.02 + 0.013, pcm)  # 2 frames late, plus 13 ms
    delays = frame_delays(sent, received)
    assert len(delays) == 78
    assert delays == pytest.approx([0.053] * 78, abs=1e-9)
