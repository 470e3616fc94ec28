"""The `bot` command: demo, serve, join, processors, settings, frames.

Every mistake a user can make in settings, files, certificates, ports or processor names ends
in one line `bot: ...` that names the setting and the value, and exit status 2; `-v` adds the
traceback. SIGTERM or Ctrl-C leaves every call through Graph (bot.app.Bot.stop) and exits 0; a
second Ctrl-C exits at once, saying what was left up.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bot.settings import Settings, SettingsError

JOIN_TIMEOUT_SECONDS = 30.0
EXIT_USAGE = 2  # a wrong setting, file, port or name: what argparse uses for bad arguments
EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT

logger = logging.getLogger("bot.cli")


def _parser() -> argparse.ArgumentParser:
    # -v before or after the command; SUPPRESS so that a subcommand's default does not undo
    # a -v given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logs, and tracebacks with errors",
    )
    sources = argparse.ArgumentParser(add_help=False)
    sources.add_argument("--config", help="TOML settings file (BOT_CONFIG); env vars win over it")
    sources.add_argument(
        "--env-file",
        help="BOT_*=value lines (BOT_ENV_FILE), e.g. the one `python -m emulator serve "
        "--env-file F` writes; env vars win over it",
    )
    parser = argparse.ArgumentParser(
        prog="bot", description="Graph application-hosted media bot", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        parents=[common, sources],
        help="run the emulator and the bot in one process and play a scenario",
    )
    demo.add_argument(
        "--scenario",
        default="demo",
        help="a scenario in emulator/scenarios (by name) or a .toml file; default: demo",
    )
    demo.add_argument(
        "--seconds",
        type=float,
        help="how long the bot stays in each call (default: the scenario's)",
    )
    demo.add_argument("--list", action="store_true", help="list the shipped scenarios and exit")
    demo.add_argument("--json", type=Path, help="also write the summary as JSON here")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    sub.add_parser(
        "serve", parents=[common, sources], help="run the bot service (webhook + media platform)"
    )
    join = sub.add_parser(
        "join", parents=[common, sources], help="serve, and join a meeting from its join URL"
    )
    join.add_argument("url", help="the meeting's Teams join URL")
    sub.add_parser(
        "processors", parents=[common], help="list the processors BOT_PROCESSORS accepts"
    )
    settings = sub.add_parser(
        "settings",
        parents=[common, sources],
        help="print the settings in effect (secrets as ***), or their reference",
    )
    settings.add_argument(
        "--reference", action="store_true", help="print docs/settings.md (every setting)"
    )
    frames = sub.add_parser(
        "frames", parents=[common], help="make or check a frames fixture (replay tests)"
    )
    fixture = frames.add_subparsers(dest="frames_command", required=True)
    record = fixture.add_parser(
        "record",
        parents=[common],
        help="record a fixture from an emulator scenario's meeting, with its script",
    )
    record.add_argument("--scenario", default="turns", help="emulator/scenarios/NAME.toml")
    record.add_argument("--seconds", type=float, default=6.0, help="how long the bot stays")
    record.add_argument("--out", type=Path, required=True, help="the fixture directory")
    record.add_argument("--mixed", action="store_true", help="mixed audio (default unmixed)")
    check = fixture.add_parser(
        "replay",
        parents=[common],
        help="replay a fixture through the default VAD and score it against its script",
    )
    check.add_argument("directory", type=Path, help="the fixture directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    # Logs are set up before the settings load (a setting's mistake is logged and printed as
    # it should be), then again with the settings' format and levels.
    early_format = os.environ.get("BOT_LOG_FORMAT", "text")
    try:
        _configure_logging(verbose, early_format if early_format == "json" else "text", "")
        return _run(args, verbose)
    except SettingsError as exc:
        return _fail(str(exc), verbose)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, verbose: bool) -> int:
    if args.command == "processors":
        from media.pipeline.plugins import print_processors

        print_processors()
        return 0
    if args.command == "frames":
        return _frames(args, verbose)
    if args.command == "demo" and args.list:
        from emulator.scenario import load, names

        for name in names():
            print(f"{name:18s} {load(name).description}")
        return 0
    settings = Settings.load(toml_path=args.config, env_file=args.env_file)
    _configure_logging(verbose, settings.log_format, settings.log_levels)
    if args.command == "settings":
        if args.reference:
            from bot.settings_reference import reference

            print(reference(), end="")
        else:
            for name, value in settings.redacted().items():
                print(f"{name}={'' if value is None else _shown(value)}")
        return 0
    if args.command == "demo":
        from bot.app import Bot
        from bot.demo import run_demo
        from emulator.scenario import ScenarioError

        async def demo(interrupts: _Interrupts) -> int:
            def watch(bot: Bot) -> None:
                interrupts.left_up = bot.calls_left_up

            summary = await run_demo(
                args.seconds,
                args.out,
                args.json,
                True,
                args.scenario,
                settings=settings,
                on_bot=watch,
            )
            return 0 if summary.get("ok", True) else 1

        try:
            return _run_until_signal(demo)
        except ScenarioError as exc:
            return _fail(str(exc), verbose)
    url = getattr(args, "url", None)
    return _run_until_signal(lambda interrupts: _serve(settings, url, interrupts))


def _frames(args: argparse.Namespace, verbose: bool) -> int:
    """`frames record|replay`: no settings (recording runs its own emulator, as the demo)."""
    from bot.frame_fixtures import record_scenario, report
    from media.pipeline.fixture_format import load

    try:
        if args.frames_command == "record":
            fixture = asyncio.run(
                record_scenario(args.scenario, args.seconds, args.out, args.mixed)
            )
        else:
            fixture = load(args.directory)
    except ValueError as exc:  # FixtureError, ScenarioError: a file or name to fix
        return _fail(str(exc), verbose)
    except RuntimeError as exc:  # the emulated call carried no media: not a usage mistake
        print(f"bot: {exc}", file=sys.stderr)
        return 1
    for line in report(fixture):
        print(line)
    return 0


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _fail(message: str, verbose: bool) -> int:
    if verbose:
        logger.exception("bot: %s", message)
    print(f"bot: {message}", file=sys.stderr)
    return EXIT_USAGE


def _configure_logging(verbose: bool, log_format: str, levels: str) -> None:
    from bot.logs import configure_logging

    try:
        configure_logging(verbose=verbose, log_format=log_format, levels=levels)
    except ValueError as exc:
        raise SettingsError(f"BOT_LOG_FORMAT/BOT_LOG_LEVELS: {exc}") from None


# -- running until SIGTERM / Ctrl-C --------------------------------------------------------


class _Interrupts:
    """The first SIGINT or SIGTERM asks the running command to stop gracefully (it leaves its
    calls through Graph); a second Ctrl-C (SIGINT) exits at once and says what was left up."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.left_up: Callable[[], list[str]] = list
        self.count = 0

    def __call__(self, signum: int) -> None:
        self.count += 1
        if self.count == 1:
            logger.info("bot: %s: leaving every call, then exiting", signal.Signals(signum).name)
            self.stop.set()
            return
        if signum != signal.SIGINT:
            # Only a person's second Ctrl-C means "now". A SIGTERM may come twice without
            # anyone asking (timeout(1) and some supervisors signal the process and its group);
            # supervisors that will not wait send SIGKILL.
            logger.info("bot: %s again: still leaving the calls", signal.Signals(signum).name)
            return
        left = self.left_up()
        print(
            "bot: second interrupt: exiting now; left up in Graph: "
            + (", ".join(left) if left else "no call"),
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_INTERRUPTED)


def _run_until_signal(command: Callable[[_Interrupts], Coroutine[Any, Any, int]]) -> int:
    return asyncio.run(_until_signal(command))


async def _until_signal(command: Callable[[_Interrupts], Coroutine[Any, Any, int]]) -> int:
    """Run the command until it returns or a signal comes; then cancel it, so that its
    `finally` (Bot.stop: leave every call through Graph) runs, and exit 0."""
    interrupts = _Interrupts()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupts, sig)
    task = asyncio.create_task(command(interrupts))
    stopping = asyncio.create_task(interrupts.stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return 0
    finally:
        stopping.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(settings: Settings, join_url: str | None, interrupts: _Interrupts) -> int:
    from bot.app import Bot
    from bot.call import CallEndedError

    bot = Bot(settings)
    interrupts.left_up = bot.calls_left_up
    try:
        await bot.start()  # a start-up failure (port in use, ...) raises SettingsError
        print(f"serving: webhook {bot.callback_url}, media {bot.media.mp_uri_base}", flush=True)
        if join_url:
            call = await bot.join(join_url)
            print(f"joining: call {call.id}", flush=True)
            try:
                await call.wait_for("established", JOIN_TIMEOUT_SECONDS)
            except (CallEndedError, TimeoutError) as exc:
                print(f"bot: the call did not establish: {exc or 'timed out'}", file=sys.stderr)
                return 1
            print(f"established: call {call.id} (Ctrl-C or SIGTERM to leave)", flush=True)
        await asyncio.Event().wait()  # until a signal cancels this task
        return 0
    finally:
        await bot.stop()
