"""The process tests/test_recorder.py kills: it records paced frames until SIGKILL.

Run as `python -m tests.recorder_child OUT_DIR` from the repository root. It records through the
process-wide writer with its default flush interval, as the bot does:

- audio: a 20 ms frame on time.monotonic() deadlines, every sample of frame i equal to i;
- video: a 64x48 frame every 1/15 s on socket 1, every luma byte of frame j equal to j % 256.

After each frame has been handed to its recorder it prints "a <i>" or "v <j>" (flushed), so the
parent knows exactly what was handed over before the kill. It gives up after MAX_SECONDS, so a
parent that died never leaves it running.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from media.frames import AUDIO_FRAME_SAMPLES, AUDIO_FRAME_SECONDS, AudioFrame, VideoFrame
from media.pipeline.recorder import AudioRecorder, VideoRecorder

MAX_SECONDS = 20.0
VIDEO_FPS = 15
WIDTH, HEIGHT = 64, 48


def video_frame(j: int, timestamp: int) -> VideoFrame:
    data = np.full(WIDTH * HEIGHT * 3 // 2, 128, dtype=np.uint8)
    data[: WIDTH * HEIGHT] = j % 256
    return VideoFrame(data, WIDTH, HEIGHT, timestamp, socket_id=1)


def main(out_dir: Path) -> None:
    audio = AudioRecorder(out_dir, "kill-test")
    video = VideoRecorder(out_dir, "kill-test", fps=VIDEO_FPS)
    audio.start()
    video.start()
    start = time.monotonic()
    next_audio = next_video = start
    i = j = 0
    while time.monotonic() - start < MAX_SECONDS:
        now = time.monotonic()
        if now >= next_audio:
            pcm = np.full(AUDIO_FRAME_SAMPLES, i, dtype=np.int16)
            audio.process(AudioFrame(pcm, timestamp=i))
            sys.stdout.write(f"a {i}\n")
            sys.stdout.flush()
            i += 1
            next_audio += AUDIO_FRAME_SECONDS
        if now >= next_video:
            video.process_video(video_frame(j, timestamp=j))
            sys.stdout.write(f"v {j}\n")
            sys.stdout.flush()
            j += 1
            next_video += 1 / VIDEO_FPS
        time.sleep(max(0.0, min(next_audio, next_video) - time.monotonic()))
    audio.close()
    video.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
