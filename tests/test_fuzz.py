"""Every parser the project owns, fuzzed (issue 14): for any input it raises its documented
error and nothing else, in bounded time.

One table, PARSERS: each entry is a hypothesis strategy of input bytes and a check that feeds
them to the parser and says which exception is documented. `test_fuzz` runs the strategy
(derandomized, no example database: the same examples on every CI run); `test_fuzz_regression`
replays every file under fixtures/fuzz/<parser>/ through the same check: the inputs that once
crashed a parser (see fixtures/fuzz/README.md), kept so they stay fixed.

Hypothesis is used through @given directly (pyproject runs pytest with -p no:hypothesispytest).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtp import RtcpPacket, RtpPacket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.calls import CallCollection
from bot.join_url import parse_join_url
from bot.notifications import RosterChanged, parse
from bot.participants import Participant, Roster, parse_msi
from bot.settings import Settings, SettingsError
from emulator.scenario import ScenarioError
from emulator.scenario import parse as parse_scenario
from media import control, safe_json
from media.clock import FakeClock
from media.dtmf import DtmfError, ToneDetector
from media.engine import AudioReceiver
from media.frames import AudioFrame
from media.negotiation import CaptureTimeMap
from media.pipeline.replay import FixtureError, load, save_frames
from tests.test_replay import synthetic

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "fuzz"
EXAMPLES = 150
SECONDS_PER_INPUT = 1.0  # "bounded time": no single input may take longer

# -- input strategies ------------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
# Tokens that broke a JSON consumer somewhere: past CPython's int digit limit, not JSON (RFC
# 8259 section 6), a lone surrogate, nesting, a Unicode digit, out-of-range numbers.
HOSTILE = st.sampled_from(
    [
        "9" * 5000,
        "-" + "9" * 4301,
        "1" * 41,
        "1e999",
        "NaN",
        "-Infinity",
        '"\\ud800"',
        '"\\udfff\\ud800"',
        "[" * 80 + "]" * 80,
        '"²"',
        '"٣"',
        "4294967296",
        "-1",
        "1.5",
        "true",
        '""',
        '"\\u0000"',
    ]
)


@st.composite
def json_text(draw: st.DrawFn, value: st.SearchStrategy[Any] = JSON_VALUES) -> bytes:
    """A JSON text, sometimes with a hostile token spliced in, truncated or byte-flipped."""
    text = json.dumps(draw(value))
    how = draw(st.sampled_from(["as is", "splice", "truncate", "flip"]))
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(HOSTILE) + text[at:]
    elif how == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    data = text.encode()
    if how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


def hostile_scalar() -> st.SearchStrategy[Any]:
    return SCALARS | HOSTILE.map(lambda t: _try_json(t))


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


SOURCE_IDS = st.sampled_from(["1", "4294967295", "4294967296", "²", "٣", "", "-1", " 7", "0x1"])
STREAMS = st.lists(
    st.fixed_dictionaries(
        {"mediaType": st.sampled_from(["audio", "video", 3])},
        optional={"sourceId": SOURCE_IDS | hostile_scalar(), "direction": st.text(max_size=5)},
    ),
    max_size=3,
)
PARTICIPANTS = st.fixed_dictionaries(
    {"id": st.sampled_from(["p-1", "p-2", "p-3"]) | hostile_scalar()},
    optional={
        "mediaStreams": STREAMS | JSON_VALUES,
        "info": JSON_VALUES | st.fixed_dictionaries({"identity": JSON_VALUES}),
        "rosterSequenceNumber": hostile_scalar(),
        "removedState": JSON_VALUES,
        "isMuted": hostile_scalar(),
    },
)
URLS = st.sampled_from(
    [
        "/communications/calls/c-1",
        "/communications/calls/c-1/participants",
        "/communications/calls/c-1/participants/p-1",
        "/communications/calls/c-1/operations/o-1",
        "/communications/calls/c-1/contentsharingsessions",
        "/app/calls/c-2",
        "/communications/calls/",
        "/communications/calls/c-1/participants/p-1/x",
    ]
) | st.text(max_size=30)
RESOURCE_DATA = (
    JSON_VALUES
    | st.lists(PARTICIPANTS, max_size=3)
    | st.fixed_dictionaries(
        {"participants": st.lists(PARTICIPANTS, max_size=3)},
        optional={"sequenceNumber": hostile_scalar()},
    )
    | st.fixed_dictionaries(
        {},
        optional={
            "state": st.sampled_from(["incoming", "established", "terminated"]) | hostile_scalar(),
            "resultInfo": JSON_VALUES,
            "toneInfo": JSON_VALUES | st.fixed_dictionaries({"tone": hostile_scalar()}),
            "incomingContext": JSON_VALUES,
            "source": JSON_VALUES,
            "mediaState": JSON_VALUES,
            "myParticipantId": hostile_scalar(),
            "id": hostile_scalar(),
            "status": hostile_scalar(),
        },
    )
)
ITEMS = st.fixed_dictionaries(
    {
        "changeType": st.sampled_from(["created", "updated", "deleted"]) | hostile_scalar(),
        "resourceUrl": URLS | hostile_scalar(),
        "resourceData": RESOURCE_DATA,
    },
    optional={"resource": URLS},
)
NOTIFICATION_BODIES = st.lists(ITEMS | JSON_VALUES, max_size=5).map(
    lambda items: json.dumps({"value": items}).encode()
)

CONTROL_MESSAGES = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(control._REQUIRED)) | hostile_scalar()},
    optional={
        k: hostile_scalar()
        for k in ("protocol", "mpMediaSessionId", "token", "sdp", "socketId", "msi", "history")
    },
).map(lambda m: json.dumps(m).encode())


@st.composite
def rtp_packets(draw: st.DrawFn) -> bytes:
    """An RTP header (RFC 3550 section 5.1) with random fields, CSRCs and a header extension
    (RFC 8285), then a random payload; or random bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=80))
    cc = draw(st.integers(0, 15))
    ext = draw(st.booleans())
    first = 0x80 | (0x10 if ext else 0) | cc
    pt = draw(st.sampled_from([111, 101, 0, 127]))
    header = bytes([first, draw(st.integers(0, 1)) << 7 | pt])
    header += draw(st.binary(min_size=10, max_size=10))  # sequence, timestamp, ssrc
    header += draw(st.binary(min_size=4 * cc, max_size=4 * cc))
    if ext:
        profile = draw(st.sampled_from([b"\xbe\xde", b"\x10\x00", b"\x00\x00"]))
        words = draw(st.integers(0, 4))
        header += profile + words.to_bytes(2, "big") + draw(st.binary(max_size=4 * words))
    return header + draw(st.binary(max_size=60))


# -- the checks: one per parser --------------------------------------------------------------------


def check_json(data: bytes) -> None:
    with _only(safe_json.JsonRefused):
        safe_json.loads(data)


def check_notifications(data: bytes) -> None:
    """The webhook's path after authentication: the body parsed, each item parsed and applied.
    Applying never raises (CallCollection.apply counts what it skips); `failed` stays 0."""
    try:
        body = safe_json.loads(data)
    except safe_json.JsonRefused:
        return
    items = body.get("value") if isinstance(body, dict) else None

    async def apply_all() -> None:
        calls = CallCollection()
        try:
            for item in items if isinstance(items, list) else []:
                with _only(ValueError):
                    parse(item)
                calls.apply(item)
            assert calls.failed == 0, "an item raised while applied"
        finally:
            await calls.close()

    asyncio.run(apply_all())


def check_roster(data: bytes) -> None:
    try:
        body = safe_json.loads(data)
    except safe_json.JsonRefused:
        return
    roster = Roster("c-1")
    for item in body.get("value", []) if isinstance(body, dict) else []:
        try:
            note = parse(item)
        except ValueError:
            continue
        if isinstance(note, RosterChanged):
            for delta in (False, True):
                roster.apply(note, delta)
    for resource in roster.participants.values():
        participant = Participant(None, resource)  # type: ignore[arg-type]
        for msi in participant.msis("audio") + participant.msis("video"):
            assert 0 <= msi <= 0xFFFFFFFF
        assert isinstance(participant.display_name, str) and isinstance(participant.is_muted, bool)


def check_control(data: bytes) -> None:
    with _only(control.ControlError):
        control.parse(data.decode("utf-8", "replace"))
    with _only(control.ControlError):
        control.parse(data)


class _Ring:
    def push(self, item: AudioFrame) -> None:
        assert item.pcm.shape == (320,)


def check_rtp(data: bytes) -> None:
    """aiortc parses (ValueError for what is not RTP); what it passes, our receive path takes:
    capture-time extension, DTMF (RFC 4733), jitter buffer, Opus decode. Never raises."""
    extensions = CaptureTimeMap()
    extensions._capture_id = 1  # as configure() sets it when abs-capture-time is negotiated
    try:
        packet = RtpPacket.parse(data, extensions)
    except ValueError:
        return

    async def receive() -> None:
        receiver = AudioReceiver(_Ring(), FakeClock(1.0))
        receiver.dtmf_pt = 101
        try:
            await receiver.handle_rtp(packet)
            receiver.expire()
        finally:
            receiver.close()

    asyncio.run(receive())


def check_rtcp(data: bytes) -> None:
    with _only(ValueError):
        RtcpPacket.parse(data)


def check_dtmf(data: bytes) -> None:
    detector = ToneDetector()
    for timestamp in (0, 0, 1):
        with _only(DtmfError):
            detector.add(timestamp, data)


def check_msi(data: bytes) -> None:
    value = data.decode("utf-8", "replace")
    msi = parse_msi(value)
    assert msi is None or (0 <= msi <= 0xFFFFFFFF and value.isascii())


def check_join_url(data: bytes) -> None:
    with _only(ValueError):
        parse_join_url(data.decode("utf-8", "replace"))


def check_settings_env(data: bytes) -> None:
    """Settings.load with an arbitrary environment: only SettingsError."""
    try:
        env = json.loads(data)
    except ValueError:
        return
    if not isinstance(env, dict):
        return
    env = {f"BOT_{str(k).upper()}": str(v) for k, v in env.items()}
    with _only(SettingsError):
        Settings.load(env=env)
    with _only(SettingsError):
        Settings.from_mapping({str(k)[4:].lower(): v for k, v in env.items()})


def check_settings_toml(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bot.toml"
        path.write_bytes(data)
        with _only(SettingsError):
            Settings.load(env={}, toml_path=str(path))


def check_scenario(data: bytes) -> None:
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    with _only(ScenarioError):
        parse_scenario(table, "fuzz", Path(tempfile.gettempdir()))


def check_replay(data: bytes) -> None:
    """Bytes split into manifest.json and frames.npz at the first NUL-free 0xFF byte."""
    manifest, _, media = data.partition(b"\xff\xfe")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_bytes(manifest)
        (Path(tmp) / "frames.npz").write_bytes(media)
        with _only(FixtureError):
            load(tmp, max_bytes=1 << 20)


SETTINGS_TOML = st.dictionaries(
    st.sampled_from(
        [
            "webhook_port",
            "notification_leeway_seconds",
            "app_id",
            "media_port_min",
            "instance_public_ip",
            "processors",
            "log_levels",
            "gc_freeze",
            "nonsense",
        ]
    ),
    JSON_VALUES,
    max_size=4,
).map(lambda table: _toml(table).encode())
SCENARIO_TOML = st.fixed_dictionaries(
    {},
    optional={
        "description": JSON_VALUES,
        "meeting": st.dictionaries(
            st.sampled_from(["participants", "thread_id", "organizer", "lobby"]), JSON_VALUES
        ),
        "participants": st.lists(
            st.dictionaries(
                st.sampled_from(["name", "msi", "talk", "joins_at", "video_msi", "voice", "kind"]),
                JSON_VALUES,
            ),
            max_size=3,
        ),
        "bot": st.dictionaries(
            st.sampled_from(["video_sockets", "unmixed", "capacity"]), JSON_VALUES
        ),
        "incoming": JSON_VALUES,
    },
).map(lambda table: _toml(table).encode())


def _toml(table: dict[str, Any]) -> str:
    """A tiny TOML writer: JSON's syntax for values is TOML's for most of them."""
    lines = []
    for key, value in table.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines)


@st.composite
def fixture_bytes(draw: st.DrawFn) -> bytes:
    """A real fixture's manifest and npz, cut, flipped or replaced."""
    manifest, media = _real_fixture()
    if draw(st.booleans()):
        manifest = draw(json_text(st.just(json.loads(manifest)) | JSON_VALUES))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(media)))
        media = media[:cut]
    if draw(st.booleans()) and media:
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(media) - 1))
            media = media[:at] + bytes([draw(st.integers(0, 255))]) + media[at + 1 :]
    if draw(st.integers(0, 9)) == 0:
        media = draw(st.binary(max_size=200))
    return manifest + b"\xff\xfe" + media


_REAL: list[tuple[bytes, bytes]] = []


def _real_fixture() -> tuple[bytes, bytes]:
    if not _REAL:
        with tempfile.TemporaryDirectory() as tmp:
            save_frames(tmp, synthetic("unmixed")[:3], "fuzz")
            _REAL.append(
                (
                    (Path(tmp) / "manifest.json").read_bytes(),
                    (Path(tmp) / "frames.npz").read_bytes(),
                )
            )
    return _REAL[0]


# -- the table and the tests ---------------------------------------------------------------------


@dataclass(frozen=True)
class Parser:
    inputs: st.SearchStrategy[bytes]
    check: Callable[[bytes], None]
    examples: int = EXAMPLES


PARSERS: dict[str, Parser] = {
    "json": Parser(json_text(), check_json, 300),
    "notifications": Parser(NOTIFICATION_BODIES | json_text(), check_notifications),
    "roster": Parser(NOTIFICATION_BODIES, check_roster),
    "media-control": Parser(CONTROL_MESSAGES | json_text(), check_control, 300),
    "rtp": Parser(rtp_packets(), check_rtp),
    "rtcp": Parser(st.binary(max_size=120), check_rtcp, 300),
    "dtmf": Parser(st.binary(max_size=8), check_dtmf, 100),
    "msi": Parser(st.text(max_size=12).map(str.encode) | SOURCE_IDS.map(str.encode), check_msi),
    "join-url": Parser(
        st.builds(
            lambda a, b, q: f"https://teams.microsoft.com/l/meetup-join/{a}/{b}?{q}".encode(),
            st.text(max_size=10),
            st.text(max_size=10),
            st.text(max_size=20)
            | json_text().map(lambda j: "context=" + j.decode("utf-8", "replace")),
        )
        | st.binary(max_size=60),
        check_join_url,
    ),
    "settings-env": Parser(
        st.dictionaries(
            st.sampled_from(
                [
                    "webhook_port",
                    "notification_leeway_seconds",
                    "media_port_min",
                    "media_port_max",
                    "instance_public_ip",
                    "log_levels",
                    "processors",
                    "gc_freeze",
                    "processor_options",
                    "state_reconcile_seconds",
                ]
            ),
            st.text(max_size=12) | HOSTILE,
            max_size=4,
        ).map(lambda env: json.dumps(env).encode()),
        check_settings_env,
        60,
    ),
    "settings-toml": Parser(SETTINGS_TOML | st.binary(max_size=60), check_settings_toml, 60),
    "scenario": Parser(SCENARIO_TOML, check_scenario, 100),
    "replay": Parser(fixture_bytes(), check_replay, 100),
}


class _only:
    """Allows the documented exception; anything else fails the test with the input named."""

    def __init__(self, documented: type[BaseException]) -> None:
        self.documented = documented

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        return kind is not None and issubclass(kind, self.documented)


def run_check(parser: Parser, data: bytes) -> None:
    started = time.perf_counter()
    parser.check(data)
    took = time.perf_counter() - started
    assert took < SECONDS_PER_INPUT, f"{took:.2f} s for one input"


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_fuzz(name: str) -> None:
    parser = PARSERS[name]

    @settings(
        max_examples=parser.examples,
        deadline=None,
        derandomize=True,  # the same examples on every run: CI stays deterministic
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=parser.inputs)
    def fuzz(data: bytes) -> None:
        run_check(parser, data)

    fuzz()


def _regressions() -> list[tuple[str, Path]]:
    return sorted(
        (d.name, f) for d in FIXTURES.iterdir() if d.is_dir() for f in d.iterdir() if f.is_file()
    )


def test_every_fuzz_fixture_names_a_parser() -> None:
    assert {name for name, _ in _regressions()} <= set(PARSERS)


@pytest.mark.parametrize(("name", "path"), _regressions(), ids=lambda v: getattr(v, "name", v))
def test_fuzz_regression(name: str, path: Path) -> None:
    run_check(PARSERS[name], path.read_bytes())
