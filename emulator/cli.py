"""`python -m emulator serve`: the emulator alone, for a bot in another process.

`--env-file F` writes the bot's settings for this emulator (its URLs, the app registration, the
throwaway certificates, loopback media) as dotenv `BOT_*=value` lines, so that
`python -m bot join URL --env-file F` (or `set -a; . F; set +a`, or a compose `env_file`) is
the whole set-up. Without `--cert` the emulator makes a throwaway CA and a certificate for
localhost and 127.0.0.1 that the bot borrows: in a temporary directory removed on exit, or in
`--state-dir D`, kept and reused while still good. The CA's own key is never written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import io
import ipaddress
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from emulator.scenario import ScenarioError, load
from emulator.server import AppRegistration, Emulator

DEFAULT_APP_ID = "00000000-0000-0000-0000-00000000b07a"
DEFAULT_SECRET = "emulator-secret"
DEFAULT_TENANT = "00000000-0000-0000-0000-0000000000e1"
READY = "emulator: ready"  # the last line printed once serving (scripts and tests wait for it)
# Kept certificates this close to their expiry are issued again instead of reused.
RENEW_BEFORE = datetime.timedelta(days=1)
# A value a POSIX shell, python-dotenv and docker compose all read the same way unquoted.
_BARE = re.compile(r"[A-Za-z0-9_./:,@%+=-]*")


@dataclass(frozen=True)
class Certs:
    ca_file: str
    cert_file: str
    key_file: str


# Per-packet and per-request libraries stay at WARNING. The emulator keeps its own few lines
# instead of importing the bot's logging set-up: it imports neither `bot` nor `media`.
QUIET_LOGGERS = ("aioice", "aiortc", "aiohttp.access", "msal", "urllib3", "asyncio")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("emulator").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emulator", description="Graph + Teams emulator")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=int, default=9443, help="HTTPS port; 0: any free one (printed)"
    )
    serve.add_argument("--cert", help="PEM certificate chain (default: a throwaway local CA)")
    serve.add_argument("--key", help="PEM private key for --cert")
    serve.add_argument("--trust", help="CA bundle to trust for the bot's webhook and media")
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="keep the throwaway CA and certificates here and reuse them while still good "
        "(default: a temporary directory removed on exit)",
    )
    serve.add_argument(
        "--env-file",
        type=Path,
        help="write the bot's settings for this emulator here (BOT_*=value lines, mode 0600)",
    )
    serve.add_argument(
        "--media-host",
        help="comma-separated local addresses for the media processor's ICE host candidates, "
        "loopback allowed; 'all': every non-loopback interface (default: 127.0.0.1 when --host "
        "is loopback, otherwise all)",
    )
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
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    args = parser.parse_args(argv)
    # Lines reach a pipe as they are printed (READY is awaited by whoever started us).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    _configure_logging(args.verbose)
    try:
        media_hosts = media_host_addresses(args.media_host, args.host)
    except ValueError as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    if (args.cert is None) != (args.key is None):
        print("emulator: --cert and --key go together", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, media_hosts))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def media_host_addresses(option: str | None, host: str) -> tuple[str, ...]:
    """The media processor's host-candidate addresses for `--media-host` and `--host`.

    Unset: 127.0.0.1 (or ::1) when the emulator listens on loopback, so that `emulator serve`
    and `bot join` on one machine connect with no other setting and no other interface; the
    addresses of every non-loopback interface (stock aioice) otherwise, and for 'all'.
    """
    if option is None:
        if not _is_loopback(host):
            return ()
        return ("::1",) if host == "::1" else ("127.0.0.1",)
    if option.strip().lower() in ("all", ""):
        return ()
    addresses = []
    for item in option.split(","):
        try:
            addresses.append(str(ipaddress.ip_address(item.strip())))
        except ValueError:
            raise ValueError(f"--media-host {item.strip()!r} is not an IP address") from None
    return tuple(addresses)


def cert_names(host: str) -> tuple[str, ...]:
    """localhost and 127.0.0.1 (what the bot serves as by default), and --host if it is a
    name or address a client could use."""
    names = ["localhost", "127.0.0.1"]
    if host not in names and host not in ("0.0.0.0", "::", ""):
        names.append(host)
    return tuple(names)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically (a temporary file in the same directory renamed over `path`), created with
    `mode`, so no reader sees half a file and a secret is never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _paths(directory: Path) -> Certs:
    return Certs(str(directory / "ca.pem"), str(directory / "cert.pem"), str(directory / "key.pem"))


def make_certs(directory: Path, names: tuple[str, ...]) -> Certs:
    """A new CA and a certificate for `names` under `directory`; the CA key stays in memory."""
    ca = trustme.CA()
    leaf = ca.issue_cert(*names)
    paths = _paths(directory)
    _write_file(Path(paths.ca_file), ca.cert_pem.bytes(), 0o644)
    _write_file(Path(paths.key_file), leaf.private_key_pem.bytes(), 0o600)
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    _write_file(Path(paths.cert_file), chain, 0o644)
    return paths


def load_certs(directory: Path, names: tuple[str, ...], now: datetime.datetime) -> Certs | None:
    """The certificates kept under `directory` if all three files are there and still good
    for `names` at `now`: both within their validity (RENEW_BEFORE to spare), the leaf issued
    by the CA, naming every one of `names` (RFC 6125 section 6: subjectAltName), and matching
    the key. None otherwise."""
    paths = _paths(directory)
    try:
        ca = x509.load_pem_x509_certificate(Path(paths.ca_file).read_bytes())
        leaf = x509.load_pem_x509_certificate(Path(paths.cert_file).read_bytes())
        key = serialization.load_pem_private_key(Path(paths.key_file).read_bytes(), None)
        leaf.verify_directly_issued_by(ca)
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return None  # missing, unreadable, not PEM, not issued by this CA, or nameless
    for cert in (ca, leaf):
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - RENEW_BEFORE:
            return None
    named = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    named |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    for name in names:
        with contextlib.suppress(ValueError):
            name = str(ipaddress.ip_address(name))
        if name not in named:
            return None
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        return None
    return paths


def kept_certs(
    directory: Path, names: tuple[str, ...], now: datetime.datetime | None = None
) -> tuple[Certs, bool]:
    """The certificates under a state directory, issued anew unless still good; and whether
    they were reused."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = load_certs(directory, names, now or datetime.datetime.now(datetime.UTC))
    if found is not None:
        return found, True
    return make_certs(directory, names), False


@contextlib.contextmanager
def throwaway_certs(names: tuple[str, ...]) -> Iterator[Certs]:
    """Certificates in a new temporary directory (mode 0700), removed when the block ends,
    however it ends (an exception, a signal turned into a normal exit, a cancellation)."""
    with tempfile.TemporaryDirectory(prefix="emulator-certs-") as directory:
        yield make_certs(Path(directory), names)


def env_value(value: str) -> str:
    """`value` as a dotenv value that a POSIX shell (`. F`), python-dotenv and docker compose's
    env_file all read back unchanged: bare if it is plain, else in single quotes (literal in
    all three, https://docs.docker.com/compose/env-file/ for compose, except that python-dotenv
    expands ${NAME} in every value, quoted or not)."""
    if _BARE.fullmatch(value):
        return value
    if any(c in value for c in "'\\\n\r") or "${" in value:
        raise ValueError(
            f"cannot write {value!r} as an env file value (a quote, backslash, newline or ${{)"
        )
    return f"'{value}'"


def write_env_file(path: Path, values: dict[str, str], comment: str) -> None:
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"{name}={env_value(value)}" for name, value in values.items()]
    _write_file(path, ("\n".join(lines) + "\n").encode(), 0o600)


def _url_host(host: str) -> str:
    """The host the bot should use in URLs: localhost for loopback or every interface (the
    certificate's name, as the bot's defaults), the address itself otherwise."""
    if _is_loopback(host) or host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


def bot_settings(
    host: str, port: int, certs: Certs | None, media_hosts: tuple[str, ...]
) -> dict[str, str]:
    """The bot's BOT_* settings for this emulator (names as in bot/settings.py)."""
    base = f"https://{_url_host(host)}:{port}"
    values = {
        "BOT_GRAPH_URL": f"{base}/v1.0",
        "BOT_AUTHORITY_URL": base,
        "BOT_NOTIFICATION_OPENID_URL": f"{base}/v1/.well-known/OpenIdConfiguration",
    }
    if certs is not None:
        # The bot trusts the emulator's CA and borrows its certificate for localhost: the
        # emulator trusts that CA for the bot's webhook and media endpoint in turn.
        values["BOT_CA_FILE"] = certs.ca_file
        values["BOT_CERT_FILE"] = certs.cert_file
        values["BOT_KEY_FILE"] = certs.key_file
    values["BOT_APP_ID"] = DEFAULT_APP_ID
    values["BOT_APP_SECRET"] = DEFAULT_SECRET
    values["BOT_TENANT_ID"] = DEFAULT_TENANT
    if media_hosts and all(ipaddress.ip_address(a).is_loopback for a in media_hosts):
        # Loopback media only works if the bot's candidates are on loopback too (a bot on
        # this machine); other addresses are this machine's, not necessarily the bot's.
        values["BOT_MEDIA_HOST_ADDRESSES"] = ",".join(media_hosts)
    return values


async def _serve(args: argparse.Namespace, media_hosts: tuple[str, ...]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        # The first SIGINT/SIGTERM stops cleanly; a second one, if stopping hangs, cancels,
        # which still runs every finally (the throwaway certificates go either way).
        if stop.is_set() and main_task is not None:
            main_task.cancel()
        stop.set()

    # First thing: a signal during start-up must not kill us with the certificates on disk.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    with contextlib.ExitStack() as stack:
        certs: Certs | None = None
        if args.cert is None:
            names = cert_names(args.host)
            try:
                if args.state_dir is not None:
                    certs, reused = kept_certs(args.state_dir, names)
                    how = "reused" if reused else "new"
                    print(f"emulator: {how} CA kept at {certs.ca_file}")
                else:
                    certs = stack.enter_context(throwaway_certs(names))
                    print(f"emulator: throwaway CA at {certs.ca_file} (removed on exit)")
            except OSError as exc:
                print(f"emulator: cannot write the certificates: {exc}", file=sys.stderr)
                return 1
        try:
            return await _run(args, media_hosts, certs, stop)
        except asyncio.CancelledError:
            return 130
    raise AssertionError("unreachable")  # pragma: no cover - ExitStack does not swallow


async def _run(
    args: argparse.Namespace,
    media_hosts: tuple[str, ...],
    certs: Certs | None,
    stop: asyncio.Event,
) -> int:
    cert = certs.cert_file if certs is not None else args.cert
    key = certs.key_file if certs is not None else args.key
    trust = args.trust or (certs.ca_file if certs is not None else None)
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
            media_host_addresses=media_hosts,
        )
    except (ScenarioError, ValueError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    emulator = Emulator(config)
    try:
        try:
            await emulator.start()
        except OSError as exc:
            print(f"emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"emulator: scenario {scenario.name}: {scenario.description}")
        print(f"emulator: listening on {args.host}:{emulator.port}")
        print(f"emulator: Graph at {emulator.base_url}/v1.0")
        print(f"emulator: status page {emulator.base_url}/emulator/status")
        print(f"emulator: media host candidates on {', '.join(media_hosts) or 'all interfaces'}")
        join_urls = []
        for meeting in config.meetings:
            join_urls.append(emulator.join_url(meeting))
            print(f"emulator: meeting {meeting.subject or ''} join URL {join_urls[-1]}")
            print(f"emulator:   people join it in a browser at {emulator.join_page_url(meeting)}")
        if scenario.incoming:
            print(
                'emulator: POST /emulator/scenario/ring {"callbackUri": ...} rings the bot with '
                f"the scenario's {len(scenario.incoming)} incoming call(s)"
            )
        if args.env_file is not None:
            values = bot_settings(args.host, emulator.port, certs, media_hosts)
            try:
                write_env_file(
                    args.env_file,
                    values,
                    f"The bot's settings for `python -m emulator serve` (pid {os.getpid()}) at "
                    f"{emulator.base_url}.\nValid while it runs"
                    + (f"; its certificates stay in {args.state_dir}." if args.state_dir else ".")
                    + ("" if certs else "\nSet BOT_CA_FILE, BOT_CERT_FILE and BOT_KEY_FILE."),
                )
            except (OSError, ValueError) as exc:
                print(f"emulator: cannot write {args.env_file}: {exc}", file=sys.stderr)
                return 1
            print(f"emulator: bot settings in {args.env_file}")
            for url in join_urls:
                print(f"emulator:   python -m bot join '{url}' --env-file {args.env_file}")
        print(READY)
        await stop.wait()
    finally:
        await emulator.stop()
    return 0
