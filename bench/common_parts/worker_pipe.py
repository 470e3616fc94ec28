"""A benchmark's child process with a request/reply pipe (multiprocessing "spawn"), shared by
bench/capacity.py and bench/attack.py: the load runs in processes of its own, so what it costs
is not the measured process's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

ANSWER_SECONDS = 60.0
STOP_SECONDS = 60.0

log = logging.getLogger("bench")


class WorkerError(Exception):
    """A worker failed a request, died, or did not answer in time."""


class Worker:
    """A child process (multiprocessing "spawn") with a request/reply pipe."""

    def __init__(
        self,
        ctx: SpawnContext,
        name: str,
        target: Callable[..., None],
        *args: Any,
        stop_seconds: float = STOP_SECONDS,
    ) -> None:
        self.name = name
        self.stop_seconds = stop_seconds
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
                self.ask("stop", timeout=self.stop_seconds)
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
