"""Logging a person can operate with: our loggers at INFO, everyone else's at WARNING, as text
or as one JSON object per line on stderr.

`configure_logging` owns one handler on the root logger. Python warnings (logging
.captureWarnings) and uncaught exceptions in the main thread, other threads and "exception
ignored" reports (sys.excepthook, threading.excepthook, sys.unraisablehook) are routed through
it too, so with `log_format="json"` every line on stderr parses. Exceptions in asyncio
callbacks need nothing here: the default loop exception handler of asyncio and of uvloop
already logs them to the `asyncio` logger (asyncio/base_events.py default_exception_handler,
uvloop/loop.pyx default_exception_handler).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
import types
from typing import Any, TextIO

OUR_LOGGERS = ("bot", "media", "emulator")
# Libraries whose INFO/DEBUG lines are per packet, per request or per font: WARNING unless
# asked for with `levels` (BOT_LOG_LEVELS). Any other library inherits the root's WARNING.
THIRD_PARTY_LOGGERS = (
    "aioice",
    "aiortc",
    "aiohttp",
    "msal",
    "urllib3",
    "requests",
    "asyncio",
    "matplotlib",
    "PIL",
    "libav",
    "websockets",
    "playwright",
    "trustme",
    "py.warnings",
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_MARK = "_bot_logs_handler"
_configured: set[str] = set()  # logger names whose level configure_logging set
_original_hooks: dict[str, Any] = {}


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever sys.stderr is at the time of each record (as logging.lastResort
    does), so a test's or a daemon's replacement stderr gets the lines."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the call site passed as `extra=` (call_id first when there is one)."""
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
    if "call_id" in fields:
        fields = {"call_id": fields.pop("call_id"), **fields}
    return fields


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT`, then each extra field as ` key=value` (e.g. ` call_id=...`)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        extras = "".join(f" {k}={v}" for k, v in extra_fields(record).items())
        return line + extras


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ts (ISO 8601, UTC), level, logger, message,
    thread, the record's extra fields, and `exc` / `stack` when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)  # an extra never hides a standard field
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold (a Path, an enum) still logs.
        return json.dumps(entry, default=str, ensure_ascii=False)


def parse_levels(levels: str) -> dict[str, int]:
    """ "aioice=DEBUG, msal=INFO" -> {"aioice": 10, "msal": 20}. Level names are logging's
    (case-insensitive) or numbers. Raises ValueError naming the first bad entry."""
    parsed: dict[str, int] = {}
    for raw in levels.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, level = (part.strip() for part in entry.partition("="))
        if not sep or not name or not level:
            raise ValueError(f"log levels entry {entry!r} is not LOGGER=LEVEL")
        if level.isascii() and level.isdigit():  # not "²", which int() refuses
            parsed[name] = int(level)
            continue
        number = logging.getLevelNamesMapping().get(level.upper())
        if number is None:
            raise ValueError(
                f"log levels entry {entry!r}: {level!r} is not a level "
                "(DEBUG, INFO, WARNING, ERROR, CRITICAL)"
            )
        parsed[name] = number
    return parsed


def configure_logging(*, verbose: bool, log_format: str = "text", levels: str = "") -> None:
    """Set up logging for a command (bot, emulator). Idempotent: a second call replaces what
    the first set up. Raises ValueError for an unknown format or a bad `levels` entry (before
    changing anything)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    overrides = parse_levels(levels)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    handler = _StderrHandler()
    setattr(handler, _MARK, True)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in _configured:  # a previous call's overrides do not outlive it
        logging.getLogger(name).setLevel(logging.NOTSET)
    ours = logging.DEBUG if verbose else logging.INFO
    wanted: dict[str, int] = {
        **dict.fromkeys(OUR_LOGGERS, ours),
        **dict.fromkeys(THIRD_PARTY_LOGGERS, logging.WARNING),
        **overrides,
    }
    for name, level in wanted.items():
        (root if name == "root" else logging.getLogger(name)).setLevel(level)
    _configured.clear()
    _configured.update(n for n in wanted if n != "root")
    logging.captureWarnings(True)
    _route_uncaught()


def _route_uncaught() -> None:
    """Uncaught exceptions (main thread, other threads, "Exception ignored in ...") become
    ERROR records with the traceback, instead of bare text on stderr. Installed once."""
    if _original_hooks:
        return
    _original_hooks.update(
        excepthook=sys.excepthook,
        threading=threading.excepthook,
        unraisable=sys.unraisablehook,
    )
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook


def restore_hooks() -> None:
    """Undo the exception routing (for tests that configure logging and then leave)."""
    if not _original_hooks:
        return
    sys.excepthook = _original_hooks.pop("excepthook")
    threading.excepthook = _original_hooks.pop("threading")
    sys.unraisablehook = _original_hooks.pop("unraisable")
    logging.captureWarnings(False)


_uncaught = logging.getLogger("bot.uncaught")


def _excepthook(
    kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
) -> None:
    _uncaught.error("Uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # what the default hook does too: SystemExit ends a thread quietly
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    _uncaught.error(
        "Uncaught %s in thread %s: %s",
        args.exc_type.__name__,
        name,
        args.exc_value,
        exc_info=exc_info,
    )


def _unraisablehook(args: Any) -> None:
    """sys.UnraisableHookArgs: an exception raised where nothing can catch it (__del__, a
    closed generator, a callback at interpreter shutdown)."""
    what = args.err_msg or "Exception ignored in"
    exc_info = None
    if args.exc_type is not None:
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    _uncaught.error("%s: %r", what, args.object, exc_info=exc_info)
