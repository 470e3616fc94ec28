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
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

LOG_BYTES = 20 * 1024 * 1024  # written to the worker's log file, then only counted
LOG_TEMPLATES = 200  # distinct (logger, level, message) kept in the count; later ones as "other"
ANSWER_SECONDS = 60.0
STOP_SECONDS = 30.0

log = logging.getLogger("attack")
Handler = Callable[[tuple[Any, ...]], Awaitable[Any]]


class WorkerError(Exception):
    """A worker failed a request, died, or did not answer in time."""


class Worker:
    """A child process (multiprocessing "spawn") with a request/reply pipe."""

    def __init__(
        self, ctx: SpawnContext, name: str, target: Callable[..., None], *args: Any
    ) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process: SpawnProcess = ctx.Process(
            target=target, args=(child, *args), name=name, daemon=True
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def reply(self, what: str, timeout: float) -> Any:
        try:
            if not self.conn.poll(timeout):
                raise WorkerError(f"{self.name}: no answer to {what} within {timeout:g} s")
            status, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WorkerError(f"{self.name} exited (exit code {self.process.exitcode})") from exc
        if status != "ok":
            raise WorkerError(f"{self.name}: {what}: {value}")
        return value

    def ask(self, *message: Any, timeout: float = ANSWER_SECONDS) -> Any:
        try:
            self.conn.send(message)
        except OSError as exc:
            raise WorkerError(f"{self.name} exited (exit code {self.process.exitcode})") from exc
        return self.reply(str(message[0]), timeout)

    async def aask(self, *message: Any, within: float = ANSWER_SECONDS) -> Any:
        """ask() from a loop, which goes on with the attack while the worker answers: the
        pipe's descriptor is watched by the loop (no thread left blocked on a Ctrl-C)."""
        try:
            self.conn.send(message)
        except OSError as exc:
            raise WorkerError(f"{self.name} exited (exit code {self.process.exitcode})") from exc
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        fd = self.conn.fileno()
        loop.add_reader(fd, ready)
        try:
            await asyncio.wait_for(readable, within)
        except TimeoutError:
            raise WorkerError(
                f"{self.name}: no answer to {message[0]} within {within:g} s"
            ) from None
        finally:
            loop.remove_reader(fd)
        return self.reply(str(message[0]), ANSWER_SECONDS)

    def close(self) -> None:
        """Ask it to stop; terminate, then kill, what does not."""
        if self.process.is_alive():
            try:
                self.ask("stop", timeout=STOP_SECONDS)
            except WorkerError as exc:
                log.warning("%s did not stop cleanly: %s", self.name, exc)
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


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
