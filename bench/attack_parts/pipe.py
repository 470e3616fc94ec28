"""The request pipe between bench/attack.py and its worker processes, and the workers' log.

A worker answers one request at a time: ("name", *args) -> ("ok", value) or ("error", text);
("stop",) ends it after a clean teardown, and so does the pipe closing (the bench died). Workers
ignore SIGINT: a Ctrl-C reaches the whole process group, and the bench stops them in order.

A worker's log goes to a file, capped (CappedLog): a bot at its file limit once logged asyncio's
accept error millions of times, and that must neither fill the disk nor drown the bench's
progress on stderr. What was logged is counted, and the count is part of the figures.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

LOG_BYTES = 20 * 1024 * 1024  # written to the worker's log file, then only counted
LOG_TEMPLATES = 200  # distinct (logger, level, message) kept in the count; later ones as "other"

Handler = Callable[[tuple[Any, ...]], Awaitable[Any]]


class CappedLog(logging.Handler):
    """Writes records to a file up to LOG_BYTES, and counts every record by (logger, level,
    message template), at most LOG_TEMPLATES of them."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path
        self._file = path.open("w", encoding="utf-8", errors="replace")
        self._written = 0
        self.records = 0
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.setFormatter(
            logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")
        )

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        key = (record.name, record.levelname, str(record.msg)[:120])
        if key in self.counts or len(self.counts) < LOG_TEMPLATES:
            self.counts[key] += 1
        else:
            self.counts[("other", record.levelname, "")] += 1
        if self._written >= LOG_BYTES:
            return
        try:
            line = self.format(record) + "\n"
        except Exception:  # a record whose arguments do not format: counted, not written
            return
        self._written += len(line)
        self._file.write(line)
        self._file.flush()

    def summary(self, top: int = 8) -> dict[str, Any]:
        by_level: Counter[str] = Counter()
        for (_, level, _), n in self.counts.items():
            by_level[level] += n
        return {
            "records": self.records,
            "by_level": dict(by_level),
            "top": [
                {"logger": name, "level": level, "message": msg, "count": n}
                for (name, level, msg), n in self.counts.most_common(top)
            ],
            "file": str(self.path),
            "truncated": self._written >= LOG_BYTES,
        }

    def close(self) -> None:
        self._file.close()
        super().close()


def worker_setup(log_path: Path, level: int = logging.WARNING) -> CappedLog:
    """SIGINT ignored (the bench stops its workers), every log record to a CappedLog."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handler = CappedLog(log_path)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    return handler


def run(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner() as runner:
        runner.run(main)


async def serve_pipe(conn: Connection, handle: Handler) -> None:
    """Answer requests one at a time until ("stop",) or the pipe closes."""
    while True:
        try:
            message = await asyncio.to_thread(conn.recv)
        except (EOFError, OSError):
            return  # the bench is gone: tear down
        if message[0] == "stop":
            return
        try:
            reply: tuple[str, Any] = ("ok", await handle(message))
        except Exception as exc:  # reported to the bench, which decides
            logging.getLogger("attack").exception("request %s failed", message[0])
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
