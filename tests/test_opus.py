"""libopus called directly (media/opus.py): 16 kHz mono both ways, concealment, and in-band FEC
recovering a lost frame better than concealment does."""

from __future__ import annotations

import numpy as np
import pytest

from media import opus

pytestmark = pytest.mark.skipif(opus.load() is None, reason="libopus not loadable here")


class VoiceLikeSignal:
    """Harmonics of a wandering pitch under a syllable envelope (media tests stay independent
    of the emulator)."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._phase, self._f0, self._n = 0.0, 140.0, 0

    def next_frame(self) -> np.ndarray:
        f0 = float(np.clip(self._f0 + self._rng.normal(0, 6), 90, 260))
        phase = self._phase + 2 * np.pi * np.cumsum(np.full(320, f0)) / 16_000
        self._phase, self._f0 = float(phase[-1] % (2 * np.pi)), f0
        t = (self._n * 320 + np.arange(320)) / 16_000
        self._n += 1
        voiced = sum(np.sin(k * phase) / k for k in range(1, 7))
        envelope = 0.35 + 0.65 * np.abs(np.sin(2 * np.pi * 2.0 * t))
        return (voiced * envelope * 6000).astype(np.int16)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = reference.astype(np.float64) - test.astype(np.float64)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum(noise**2)))


# Seed 8: an int16 np.dot over these samples wraps and picked lag 14 (issue 13); widened, every
# seed finds 40.
@pytest.mark.parametrize("seed", [3, 8])
def test_celt_round_trip_keeps_the_waveform(seed: int) -> None:
    encoder, decoder = opus.NativeOpusEncoder(40_000), opus.NativeOpusDecoder()
    signal = VoiceLikeSignal(seed)
    sent = [signal.next_frame() for _ in range(100)]
    got = np.concatenate([decoder.decode(encoder.encode(f)[0])[0] for f in sent])
    assert got.shape == (100 * 320,)  # 16 kHz out of the box: no resampler, no padding
    # CELT's 2.5 ms algorithmic delay (40 samples at 16 kHz) is in the output.
    # Widen before the dot product: numpy reduces int16 arrays in int16, so the products'
    # sum wraps and the "best" lag is whichever one happened to wrap highest.
    reference = np.concatenate(sent).astype(np.float64)
    decoded = got.astype(np.float64)
    lag = max(range(80), key=lambda k: float(np.dot(reference[:-80], decoded[k : k - 80])))
    assert 30 <= lag <= 50
    assert np.corrcoef(reference[:-80], decoded[lag : lag - 80])[0, 1] > 0.98


def test_fec_beats_concealment_for_a_lost_frame() -> None:
    # VOIP mode at 16 kHz is SILK, which carries LBRR (FEC) when told to expect loss.
    encoder = opus.NativeOpusEncoder(
        24_000, application=opus.OPUS_APPLICATION_VOIP, fec_loss_percent=20
    )
    signal = VoiceLikeSignal(9)
    frames = [signal.next_frame() for _ in range(300)]
    packets = [encoder.encode(f)[0] for f in frames]
    with_fec = [i for i in range(50, 299) if opus.has_fec(packets[i + 1])]
    assert len(with_fec) > 50  # FEC is actually on

    lost = with_fec[::4][:20]
    gains = []
    for i in lost:
        plain, fec = opus.NativeOpusDecoder(), opus.NativeOpusDecoder()
        for p in packets[:i]:
            plain.decode(p)
            fec.decode(p)
        reference_out = opus.NativeOpusDecoder()
        for p in packets[: i + 1]:
            expected = reference_out.decode(p)[0]
        concealed = plain.conceal(packets[i - 1])[0]
        recovered = fec.recover(packets[i + 1])[0]
        gains.append(snr_db(expected, recovered) - snr_db(expected, concealed))
    assert np.median(gains) > 3.0  # E3 measured 13.1 vs 5.8 dB


def test_bad_packets_raise_and_the_decoder_carries_on() -> None:
    encoder, decoder = opus.NativeOpusEncoder(40_000), opus.NativeOpusDecoder()
    frame = VoiceLikeSignal(1).next_frame()
    with pytest.raises(opus.OpusError):
        decoder.decode(b"")
    with pytest.raises(opus.OpusError):
        decoder.decode(b"\xff\xff\xff")  # code 3 with a frame count beyond 120 ms
    assert decoder.decode(encoder.encode(frame)[0])[0].shape == (320,)
    with pytest.raises(ValueError):
        encoder.encode(frame[:100])
