"""bot/logs.py: our loggers at INFO, third-party ones at WARNING, JSON lines on stderr; and the
call lifecycle lines a person reads, each carrying the call's id."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot import logs
from bot.app import Bot
from bot.call import Call
from bot.devcerts import DevCerts
from bot.graph import shapes
from bot.participants import describe_identity
from emulator import Emulator
from media.frames import AudioFrame
from tests.conftest import APP_ID, TENANT_ID, settings_for

ROOT = Path(__file__).resolve().parent.parent
WITHIN = 15.0
RITA = "c0ffee00-0000-4000-8000-000000000002"
REDIRECT_TO = shapes.identity_set(user_id=RITA, display_name="Rita", tenant_id=TENANT_ID)
CALLER = {"userId": "c0ffee00-0000-4000-8000-000000000001", "displayName": "Ines", "msi": 4242}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+) (\S+) (.*)$")


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """configure_logging changes process-wide state: put every bit of it back after a test."""
    root = logging.getLogger()
    names = ["", *logs.OUR_LOGGERS, *logs.THIRD_PARTY_LOGGERS, "bot.graph", "x.custom"]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(root.handlers)
    yield
    logs.restore_hooks()
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def json_lines(err: str) -> list[dict[str, Any]]:
    """Every stderr line as JSON (a line that does not parse fails the test, naming it)."""
    entries = []
    for line in err.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"stderr line is not JSON: {line!r}")
    return entries


def ours(handlers: list[logging.Handler]) -> list[logging.Handler]:
    return [h for h in handlers if getattr(h, "_bot_logs_handler", False)]


# -- configure_logging --------------------------------------------------------------------------


def test_json_lines_carry_fields_extras_and_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(verbose=False, log_format="json")
    before = datetime.datetime.now(datetime.UTC)
    logging.getLogger("bot.call").info(
        "Call(%s) state %s", "c-1", "established", extra={"call_id": "c-1", "path": Path("/x")}
    )
    try:
        1 / 0  # noqa: B018 - the exception is the point
    except ZeroDivisionError:
        logging.getLogger("media.engine").exception("tick failed")
    first, second = json_lines(capsys.readouterr().err)

    assert first["level"] == "INFO" and first["logger"] == "bot.call"
    assert first["message"] == "Call(c-1) state established"
    assert first["thread"] == threading.current_thread().name
    assert first["call_id"] == "c-1" and first["path"] == "/x"  # str() of what JSON cannot hold
    assert "exc" not in first
    ts = datetime.datetime.fromisoformat(first["ts"])
    assert ts.utcoffset() == datetime.timedelta(0) and first["ts"].endswith("Z")
    assert before - datetime.timedelta(seconds=1) <= ts <= datetime.datetime.now(datetime.UTC)
    assert second["level"] == "ERROR" and second["message"] == "tick failed"
    assert second["exc"].startswith("Traceback (most recent call last):")
    assert second["exc"].rstrip().endswith("ZeroDivisionError: division by zero")


def test_text_lines_end_with_the_call_id(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging(verbose=False, log_format="text")
    logging.getLogger("bot.calls").info("Call(%s) ended", "c-2", extra={"call_id": "c-2"})
    logging.getLogger("bot.app").warning("Bot x no call here")
    first, second = capsys.readouterr().err.splitlines()
    assert TEXT_LINE.match(first) and first.endswith(" INFO bot.calls Call(c-2) ended call_id=c-2")
    assert TEXT_LINE.match(second) and second.endswith(" WARNING bot.app Bot x no call here")


def test_ours_at_info_third_party_at_warning_verbose_only_ours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(verbose=False, log_format="json")
    for name in ("bot.app", "media.platform", "emulator.server", "aioice.ice", "aiortc.x"):
        logger = logging.getLogger(name)
        logger.debug("debug %s", name)
        logger.info("info %s", name)
        logger.warning("warning %s", name)
    logging.getLogger("some.library").info("unlisted libraries inherit the root's WARNING")
    shown = [e["message"] for e in json_lines(capsys.readouterr().err)]
    assert shown == [
        "info bot.app",
        "warning bot.app",
        "info media.platform",
        "warning media.platform",
        "info emulator.server",
        "warning emulator.server",
        "warning aioice.ice",
        "warning aiortc.x",
    ]

    logs.configure_logging(verbose=True, log_format="json")
    logging.getLogger("bot.app").debug("ours at DEBUG")
    logging.getLogger("aiortc.rtcrtpreceiver").debug("theirs stay quiet")
    logging.getLogger("aiortc.rtcrtpreceiver").info("theirs stay quiet")
    assert [e["message"] for e in json_lines(capsys.readouterr().err)] == ["ours at DEBUG"]


def test_levels_override_and_do_not_outlive_the_next_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(verbose=False, levels=" aioice=DEBUG, msal=info,bot.graph=WARNING ,")
    logging.getLogger("aioice.ice").debug("aioice debug")
    logging.getLogger("msal.application").debug("msal debug")
    logging.getLogger("msal.application").info("msal info")
    logging.getLogger("bot.graph.client").info("bot.graph info")
    logging.getLogger("bot.call").info("bot.call info")
    err = capsys.readouterr().err
    assert [TEXT_LINE.match(line).group(3) for line in err.splitlines()] == [  # type: ignore[union-attr]
        "aioice debug",
        "msal info",
        "bot.call info",
    ]
    logs.configure_logging(verbose=False)
    assert not logging.getLogger("aioice").isEnabledFor(logging.INFO)
    assert logging.getLogger("bot.graph.client").isEnabledFor(logging.INFO)
    assert logs.parse_levels("x.custom=15") == {"x.custom": 15}


@pytest.mark.parametrize(
    ("levels", "named"),
    [
        ("aioice", "'aioice'"),
        ("aioice=DEBUG,msal=LOUD", "'msal=LOUD'"),
        ("=DEBUG", "'=DEBUG'"),
        ("aioice=", "'aioice='"),
    ],
)
def test_a_bad_levels_entry_is_named_and_changes_nothing(levels: str, named: str) -> None:
    logs.configure_logging(verbose=False, log_format="json")
    root = logging.getLogger()
    handlers = list(root.handlers)
    with pytest.raises(ValueError, match=re.escape(named)):
        logs.configure_logging(verbose=True, log_format="text", levels=levels)
    assert root.handlers == handlers
    assert not logging.getLogger("bot").isEnabledFor(logging.DEBUG)  # still not verbose
    with pytest.raises(ValueError, match="'xml'"):
        logs.configure_logging(verbose=False, log_format="xml")


def test_configuring_twice_leaves_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    logs.configure_logging(verbose=False, log_format="text")
    logs.configure_logging(verbose=False, log_format="json")
    logs.configure_logging(verbose=False, log_format="json")
    assert len(ours(root.handlers)) == 1
    logging.getLogger("bot").info("once")
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["message"] == "once"


async def test_warnings_and_uncaught_exceptions_are_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # pytest's filterwarnings=error would raise it
        logs.configure_logging(verbose=False, log_format="json")
        warnings.warn("a library is unhappy", UserWarning, stacklevel=1)

    def crash() -> None:
        raise RuntimeError("thread crashed")

    thread = threading.Thread(target=crash, name="worker-7")
    thread.start()
    thread.join()

    class Broken:
        def __del__(self) -> None:
            raise KeyError("in __del__")

    Broken()  # its last reference goes here: __del__ runs now
    loop = asyncio.get_running_loop()
    failed = asyncio.Event()

    def callback() -> None:
        loop.call_soon(failed.set)
        raise LookupError("callback failed")

    loop.call_soon(callback)
    await asyncio.wait_for(failed.wait(), 5)

    warned, threaded, unraisable, looped = json_lines(capsys.readouterr().err)
    assert warned["logger"] == "py.warnings" and "a library is unhappy" in warned["message"]
    assert threaded["logger"] == "bot.uncaught" and threaded["thread"] == "worker-7"
    assert "worker-7" in threaded["message"] and "RuntimeError: thread crashed" in threaded["exc"]
    assert "Broken.__del__" in unraisable["message"] and "KeyError" in unraisable["exc"]
    assert looped["logger"] == "asyncio" and looped["level"] == "ERROR"
    assert "LookupError: callback failed" in looped["exc"]


def test_uncaught_exception_in_the_main_thread_is_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(verbose=False, log_format="json")
    try:
        raise OSError("port in use")
    except OSError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    (entry,) = json_lines(capsys.readouterr().err)
    assert entry["message"] == "Uncaught OSError: port in use"
    assert "OSError: port in use" in entry["exc"]
    logs.restore_hooks()
    assert sys.excepthook is not logs._excepthook


def test_identities_are_named_as_a_person_reads_them() -> None:
    assert describe_identity(REDIRECT_TO) == f"user Rita ({RITA})"
    assert describe_identity(shapes.identity_set(guest_id="g-1")) == "guest (g-1)"
    assert describe_identity(shapes.identity_set(phone="+15550100")) == "phone (+15550100)"
    assert describe_identity({"application": {"displayName": "Bot"}}) == "application Bot"
    assert describe_identity(None) == describe_identity({"device": {}}) == "unknown"


# -- the call lifecycle, bot against the emulator -----------------------------------------------


DISABLED = "processor raises-on-purpose disabled (raised): "


class Raises:
    """A processor that always raises: the hot loop disables it, and the bot says so."""

    name = "raises-on-purpose"

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        raise RuntimeError("broken on purpose")


def call_lines(records: list[logging.LogRecord], call: Call) -> list[str]:
    """The messages about one call; each must carry its id and start with Call(<id>)."""
    mine = [r for r in records if getattr(r, "call_id", None) == call.id]
    for record in mine:
        assert record.getMessage().startswith(f"Call({call.id}) "), record.getMessage()
    return [r.getMessage().removeprefix(f"Call({call.id}) ") for r in mine]


async def test_a_call_lifecycle_is_logged_with_its_id(
    emulator: Emulator,
    certs: DevCerts,
    client_ssl: ssl.SSLContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(verbose=False, log_format="json")
    settings = settings_for(emulator, certs).replace(
        processors="recorder", recordings_dir=str(tmp_path), record_on_join=True
    )
    bot = Bot(settings, processors=lambda ctx: [Raises()])

    decision = "fallback"

    @bot.calls.events.on("incoming_call")
    async def decide(call: Call) -> None:
        if decision == "reject":
            await call.reject("busy")
        elif decision == "redirect":
            await call.redirect([REDIRECT_TO])
        # otherwise the fallback answers

    await bot.start()
    try:
        joined = await bot.join(emulator.join_url(emulator.config.meetings[0]))
        await joined.wait_for("established", WITHIN)
        await joined.wait_until(lambda c: c.speech.recording_status == "recording", WITHIN)
        await joined.wait_until(lambda c: bool(c.speech.disabled), WITHIN)
        await joined.hang_up()
        await joined.wait_for("terminated", WITHIN)

        async with aiohttp.ClientSession() as admin:

            async def ring() -> Call:
                url = f"{emulator.base_url}/emulator/calls/incoming"
                body = {"appId": APP_ID, "callbackUri": bot.callback_url, "caller": CALLER}
                async with admin.post(url, json=body, ssl=client_ssl) as response:
                    assert response.status < 300, await response.text()
                    created = await response.json()
                return await bot.calls.wait_for_call(created["callId"], WITHIN)

            answered = await ring()
            await answered.wait_for("established", WITHIN)
            await answered.wait_until(lambda c: c.speech.recording_status == "recording", WITHIN)
            await answered.hang_up()
            await answered.wait_for("terminated", WITHIN)
            decision = "reject"
            rejected = await ring()
            await rejected.wait_for("terminated", WITHIN)
            decision = "redirect"
            redirected = await ring()
            await redirected.wait_for("terminated", WITHIN)
    finally:
        await bot.stop()

    records = caplog.records
    thread_id = emulator.config.meetings[0].thread_id
    lines = call_lines(records, joined)
    expected = [
        f"created: joining meeting {thread_id} (app-hosted media)",
        "state establishing",
        "state establishing -> established",
        "recording status recording requested",
        "recording status recording acknowledged: recorder started",
        DISABLED,
        "recording status notRecording requested",
        "recording status notRecording acknowledged",
        "hung up (DELETE accepted)",
        "state established -> terminating",
        "state terminating -> terminated",
    ]
    # The processor's line ends with the hot loop's own words for what it saw.
    seen = [DISABLED if line.startswith(DISABLED) else line for line in lines]
    assert [line for line in seen if line in expected] == expected, lines
    (ended,) = [line for line in lines if line.startswith("ended: ")]
    assert ended.startswith("ended: resultInfo 0/0 ")

    incoming = f"incoming from user {CALLER['displayName']} ({CALLER['userId']})"
    lines = call_lines(records, answered)
    assert lines[:3] == [incoming, "state incoming", "answered (app-hosted media, audio)"], lines
    assert lines.index("hung up (DELETE accepted)") > lines.index(
        next(line for line in lines if line.endswith("-> established"))
    )
    assert lines[-1].startswith("ended: resultInfo ")

    lines = call_lines(records, rejected)
    assert lines[:3] == [incoming, "state incoming", "rejected (reason busy)"], lines
    assert lines[-1].startswith("ended: resultInfo ")
    lines = call_lines(records, redirected)
    assert lines[:3] == [incoming, "state incoming", f"redirected to user Rita ({RITA})"], lines
    assert lines[-1].startswith("ended: resultInfo ")

    # The start-up lines say where the bot listens; nothing third-party below WARNING.
    started = [r.getMessage() for r in records if r.name == "bot.app" and "listening" in r.msg]
    assert any(f"callback URL {bot.callback_url}" in m for m in started), started
    assert any(f"({bot.media.mp_uri_base})" in m for m in started), started
    quiet = ("aioice", "aiortc", "aiohttp", "msal", "urllib3", "asyncio")
    assert not [r for r in records if r.name.startswith(quiet) and r.levelno < logging.WARNING]
    entries = json_lines(capsys.readouterr().err)  # every line on stderr is JSON
    assert any(e.get("call_id") == joined.id for e in entries)


# -- the commands, as a person runs them --------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    return {**env, **extra}


def test_demo_with_json_logs_prints_only_json_on_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--seconds", "3", "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env=_clean_env(BOT_LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    entries = json_lines(done.stderr)
    lifecycle = [e for e in entries if str(e["message"]).startswith("Call(")]
    assert lifecycle and all(e.get("call_id") for e in lifecycle), lifecycle
    (call_id,) = {e["call_id"] for e in lifecycle}
    said = [e["message"].removeprefix(f"Call({call_id}) ") for e in lifecycle]
    assert said[0].startswith("created: joining meeting ")
    for line in ("state establishing -> established", "hung up (DELETE accepted)"):
        assert line in said, said
    assert said[-1].startswith("ended: resultInfo 0/0"), said
    assert {e["logger"] for e in entries} >= {"bot.app", "bot.call", "bot.calls"}
    assert all(e["level"] != "DEBUG" for e in entries)


def test_emulator_alone_logs_its_own_lines_at_info(tmp_path: Path) -> None:
    """The emulator sets up its own logging (it imports nothing of the bot's)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # blocks until the emulator prints READY (or exits)
            if line.strip() == "emulator: ready":
                break
        else:
            pytest.fail("the emulator exited before it was ready")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err[-3000:]
    lines = err.splitlines()
    assert any(" INFO emulator.server " in line and "listening" in line for line in lines), err
