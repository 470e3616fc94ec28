"""The `bot` command: demo, serve, join."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from bot.settings import Settings, SettingsError

JOIN_TIMEOUT_SECONDS = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bot", description="Graph application-hosted media bot")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the emulator and the bot, join, echo, hang up")
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
    serve = sub.add_parser("serve", help="run the bot service (webhook + media platform)")
    serve.add_argument("--config", help="TOML settings file (env vars override it)")
    join = sub.add_parser("join", help="serve, and join a meeting from its Teams join URL")
    join.add_argument("url")
    join.add_argument("--config", help="TOML settings file (env vars override it)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "demo":
        from bot.demo import run_demo
        from emulator.scenario import ScenarioError, load, names

        if args.list:
            for name in names():
                print(f"{name:18s} {load(name).description}")
            return 0
        try:
            summary = asyncio.run(run_demo(args.seconds, args.out, args.json, True, args.scenario))
        except ScenarioError as exc:
            print(f"bot: {exc}", file=sys.stderr)
            return 2
        return 0 if all(c["states"][-1:] == ["terminated"] for c in summary["calls"]) else 1
    try:
        settings = Settings.load(toml_path=args.config)
    except SettingsError as exc:
        print(f"bot: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings, getattr(args, "url", None)))


async def _serve(settings: Settings, join_url: str | None) -> int:
    from bot.app import Bot
    from bot.call import CallEndedError

    bot = Bot(settings)
    await bot.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"serving: webhook {bot.callback_url}, media {bot.media.mp_uri_base}")
        if join_url:
            call = await bot.join(join_url)
            print(f"joining: call {call.id}")
            try:
                await call.wait_for("established", JOIN_TIMEOUT_SECONDS)
            except (CallEndedError, TimeoutError) as exc:
                print(f"bot: the call did not establish: {exc or 'timed out'}", file=sys.stderr)
                return 1
            print(f"established: call {call.id} (Ctrl-C to leave)")
        await stop.wait()
    finally:
        await bot.stop()
    return 0
