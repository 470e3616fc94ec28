"""The demo's whole path: real aiortc both sides, real TLS, real MSAL, real RS256 JWTs."""

from __future__ import annotations

import wave
from pathlib import Path

from bot.demo import run_demo
from emulator.participant import DEMO_MSI


async def test_demo_joins_echoes_and_hangs_up(tmp_path: Path) -> None:
    summary = await run_demo(3.0, tmp_path, tmp_path / "summary.json", show=False)

    states = summary["call_states"]
    assert "established" in states and states[-1] == "terminated"
    assert states.index("established") < states.index("terminated")
    assert summary["result_info"]["code"] == 0
    # 3 s at 50 frames/s each way is 150; a loaded machine loses set-up time, not frames.
    assert summary["frames_received"] >= 75
    assert summary["frames_sent"] >= 75
    assert summary["echo_correlation"] >= 0.9
    assert 0 < summary["echo_delay_ms"] < 1000
    # Every frame the bot heard carried the speaker's MSI from the RTP CSRC list.
    assert summary["frames_processed"] >= 75
    assert summary["speaker_frames"] == {str(DEMO_MSI): summary["frames_processed"]}
    assert summary["speaker_msis"] == [DEMO_MSI]
    with wave.open(str(tmp_path / "participant_heard.wav")) as heard:
        assert heard.getframerate() == 16_000
        assert heard.getnframes() >= 100 * 320
    assert (tmp_path / "summary.json").read_text().startswith("{")
