"""Crash-safe PCM WAV files for the recording writer thread (media/pipeline/recorder.py).

The canonical 44-byte RIFF/WAVE header (Microsoft/IBM, "Multimedia Programming Interface and
Data Specifications 1.0", 1991, chapter 3; all fields little-endian):

    offset size  field
         0    4  "RIFF"
         4    4  RIFF chunk size: 4 + (8 + 16) + (8 + data size) = 36 + data size
         8    4  "WAVE"
        12    4  "fmt "
        16    4  fmt chunk size: 16 for PCM
        20    2  format tag: 1 = WAVE_FORMAT_PCM
        22    2  channels
        24    4  samples per second
        28    4  average bytes per second: rate * block align
        32    2  block align: channels * bytes per sample
        34    2  bits per sample
        36    4  "data"
        40    4  data chunk size
        44       samples, little-endian, interleaved by channel

A WAV written the usual way (Python's `wave`, ffmpeg) carries sizes of 0 until it is closed, so a
crash leaves a file that readers take as empty. Here the header goes out at open and the two
sizes are re-patched with pwrite() after every batch of samples: data first, sizes second, so the
header never claims bytes that are not in the file. The page cache belongs to the kernel, so
what was written survives the death of the process (SIGKILL, OOM killer) without fsync; a power
cut is another matter and is not covered.

POSIX only (os.pwrite, os.writev). Writes are unbuffered OS writes: nothing sits in a userspace
buffer that a crash would lose.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

from media.frames import AUDIO_SAMPLE_RATE_HZ

HEADER_BYTES = 44
RIFF_SIZE_OFFSET = 4
DATA_SIZE_OFFSET = 40
# The size fields are unsigned 32-bit, but enough readers treat them as signed that staying
# below 2 GiB is the portable limit (about 18.6 hours of 16 kHz mono PCM16).
MAX_DATA_BYTES = 2**31 - 1 - HEADER_BYTES
_IOV_MAX = 1024  # POSIX guarantees at least 16; Linux and macOS allow 1024 buffers per writev

# What writev takes: numpy arrays go in as `array.data`, a memoryview of their memory (no copy).
Buffer = bytes | memoryview


def wav_header(data_bytes: int, sample_rate: int, channels: int, sample_bytes: int) -> bytes:
    block_align = channels * sample_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # WAVE_FORMAT_PCM
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        8 * sample_bytes,
        b"data",
        data_bytes,
    )


class AppendOnlyFile:
    """A file opened for appending with unbuffered OS writes, tracking the bytes that reached it.

    `size` is exact even after a failed write (disk full mid-batch), so a header patched from it
    never claims data that is not there.
    """

    def __init__(self, path: Path, header: bytes) -> None:
        self.path = path
        self.size = 0
        # O_EXCL: a recording never overwrites another one (a reused directory, a name clash).
        self._fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
        )
        try:
            self.append([header], len(header))
        except OSError:
            self.abandon()
            raise

    @property
    def closed(self) -> bool:
        return self._fd is None

    def append(self, buffers: Sequence[Buffer], total: int) -> None:
        """Write `buffers` (`total` bytes in all) in order, in as few syscalls as allowed."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path} is closed")
        if len(buffers) <= _IOV_MAX:
            parts: list[tuple[Sequence[Buffer], int]] = [(buffers, total)]
        else:
            parts = [
                (chunk, sum(memoryview(b).nbytes for b in chunk))
                for chunk in (buffers[i : i + _IOV_MAX] for i in range(0, len(buffers), _IOV_MAX))
            ]
        for chunk, want in parts:
            wrote = os.writev(fd, chunk)
            self.size += wrote
            if wrote < want:
                # A short write to a regular file means the disk or a quota just ran out: the
                # rest either goes in now or raises ENOSPC, with `size` counting what landed.
                rest = memoryview(b"".join(chunk))[wrote:]
                while rest:
                    n = os.write(fd, rest)
                    self.size += n
                    rest = rest[n:]

    def pwrite(self, data: bytes, offset: int) -> None:
        if self._fd is not None:
            os.pwrite(self._fd, data, offset)

    def close(self) -> None:
        """Close the descriptor. Closing twice is harmless."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def abandon(self) -> None:
        """Close after a failure; never raises."""
        try:
            self.close()
        except OSError:
            pass


class WavFile(AppendOnlyFile):
    """A WAV file being written: header at open, sizes patched by patch() and close()."""

    def __init__(
        self,
        path: Path,
        sample_rate: int = AUDIO_SAMPLE_RATE_HZ,
        channels: int = 1,
        sample_bytes: int = 2,
    ) -> None:
        self._block_align = channels * sample_bytes
        self._patched = 0
        super().__init__(path, wav_header(0, sample_rate, channels, sample_bytes))

    @property
    def data_bytes(self) -> int:
        return self.size - HEADER_BYTES

    def patch(self) -> None:
        """Make the header cover every whole sample written so far (data first, then sizes)."""
        # A failed write can stop mid-sample; the header then covers only whole blocks.
        covered = self.data_bytes - self.data_bytes % self._block_align
        if covered <= self._patched or self.closed:
            return
        self.pwrite(struct.pack("<I", 36 + covered), RIFF_SIZE_OFFSET)
        self.pwrite(struct.pack("<I", covered), DATA_SIZE_OFFSET)
        self._patched = covered

    def close(self) -> None:
        """Final sizes, then close."""
        try:
            self.patch()
        finally:
            super().close()
