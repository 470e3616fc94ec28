"""`python -m emulator serve`: the emulator alone, for a bot in another process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path

import trustme

from emulator.scenario import ScenarioError, load
from emulator.server import AppRegistration, Emulator

DEFAULT_APP_ID = "00000000-0000-0000-0000-00000000b07a"
DEFAULT_SECRET = "emulator-secret"
DEFAULT_TENANT = "00000000-0000-0000-0000-0000000000e1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulator", description="Graph + Teams emulator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9443)
    serve.add_argument("--cert", help="PEM certificate chain (default: a throwaway local CA)")
    serve.add_argument("--key", help="PEM private key for --cert")
    serve.add_argument("--trust", help="CA bundle to trust for the bot's webhook and media")
    serve.add_argument(
        "--scenario",
        default="demo",
        help="a scenario in emulator/scenarios (by name) or a .toml file; default: demo",
    )
    serve.add_argument(
        "--media-light",
        action="store_true",
        help="load-generator media: pre-encoded participant audio, the bot's audio only counted",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    cert, key, trust = args.cert, args.key, args.trust
    if cert is None:
        directory = Path(tempfile.mkdtemp(prefix="emulator-certs-"))
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", args.host)
        cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
        leaf.private_key_and_cert_chain_pem.write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        trust = trust or str(directory / "ca.pem")
        print(f"emulator: throwaway CA at {directory / 'ca.pem'} (set BOT_CA_FILE to it)")
    try:
        scenario = load(args.scenario)
        config = scenario.config(
            cert_file=cert,
            key_file=key,
            trust_file=trust,
            host=args.host,
            port=args.port,
            apps={DEFAULT_APP_ID: AppRegistration(DEFAULT_APP_ID, DEFAULT_SECRET, DEFAULT_TENANT)},
            media_light=args.media_light,
        )
    except (ScenarioError, ValueError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    emulator = Emulator(config)
    await emulator.start()
    print(f"emulator: scenario {scenario.name}: {scenario.description}")
    print(f"emulator: Graph at {emulator.base_url}/v1.0")
    print(f"emulator: status page {emulator.base_url}/emulator/status")
    for meeting in config.meetings:
        print(f"emulator: meeting {meeting.subject or ''} join URL {emulator.join_url(meeting)}")
        print(f"emulator:   people join it in a browser at {emulator.join_page_url(meeting)}")
    if scenario.incoming:
        print(
            'emulator: POST /emulator/scenario/ring {"callbackUri": ...} rings the bot with the '
            f"scenario's {len(scenario.incoming)} incoming call(s)"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.stop()
    return 0
