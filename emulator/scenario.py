"""Scenario files: meetings, incoming calls, transfer targets and faults on a timeline, in TOML
(docs/emulator.md "Scenarios" is the format's reference). `load("standup")` reads
emulator/scenarios/standup.toml; `scenario.config(cert_file=..., ...)` makes the EmulatorConfig;
`emulator.incoming.ring_incoming(emulator, callback_uri)` plays its incoming calls.

Ids in a file are short names ("alice"); the loader turns them into stable UUIDs (uuid5 of the
scenario and the name), so a scenario gives the same roster every run.
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.faults import parse_rule
from emulator.impairment import Impairment
from emulator.notifyfaults import NotificationFaults, SigningFaults
from emulator.odata import BadRequest
from emulator.participant import (
    IDENTITY_KINDS,
    IncomingCall,
    Meeting,
    MeetingEvent,
    ParticipantScript,
)
from emulator.presence import ACTIONS
from emulator.server import AppRegistration, EmulatorConfig
from emulator.sources import SILENCE, SYNTHETIC

SCENARIOS_DIR = Path(__file__).parent / "scenarios"
NAMESPACE = uuid.UUID("6f1c2b0e-5d9a-4f3e-9a51-0c4b8e2d7a10")
MAX_PARTICIPANTS = 250
MAX_EVENTS = 10_000


class ScenarioError(ValueError):
    """A scenario file that cannot be used, with where and why."""


@dataclass
class Scenario:
    name: str
    description: str
    path: Path | None
    meetings: list[Meeting] = field(default_factory=list)
    apps: dict[str, AppRegistration] = field(default_factory=dict)
    incoming: list[IncomingCall] = field(default_factory=list)
    declining_users: set[str] = field(default_factory=set)
    time_scale: float | None = None
    faults: dict[str, Any] = field(default_factory=dict)  # graph / notifications / media / signing
    bot: dict[str, Any] = field(default_factory=dict)  # what the bot does (demo and tests)
    expect: dict[str, Any] = field(default_factory=dict)  # the outcome tests assert

    def stable_id(self, name: str) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{self.name}/{name}"))

    def config(self, **values: Any) -> EmulatorConfig:
        """An EmulatorConfig with this scenario's meetings, apps, targets and faults; `values`
        give the rest (cert_file, key_file, trust_file...) and may add apps of their own."""
        apps = {**values.pop("apps", {}), **self.apps}
        config = EmulatorConfig(
            meetings=[*values.pop("meetings", []), *self.meetings],
            apps=apps,
            declining_users={*values.pop("declining_users", set()), *self.declining_users},
            **values,
        )
        tenant = next(iter(apps.values())).tenant_id if apps else None
        for meeting in self.meetings:
            if not meeting.tenant_id:
                if tenant is None:
                    raise ScenarioError(
                        f"scenario {self.name}: a meeting needs a tenant_id or an app"
                    )
                meeting.tenant_id = tenant  # the first app's tenant, as a test's own app
        config.incoming = list(self.incoming)
        if self.time_scale is not None:
            config.time_scale = self.time_scale
        try:
            self._arm_faults(config)
        except BadRequest as exc:
            raise ScenarioError(f"scenario {self.name}: [faults]: {exc}") from None
        return config

    def _arm_faults(self, config: EmulatorConfig) -> None:
        """[faults] keys are the admin API's bodies (docs/emulator.md "Fault injection"):
        graph = [{status, retryAfterSeconds, count, pathPrefix}], notifications = {...},
        signing = {...}, media = {...}; armed from the start."""
        graph = self.faults.get("graph", [])
        if not isinstance(graph, list) or not all(isinstance(r, dict) for r in graph):
            raise BadRequest("graph must be an array of fault rules ([[faults.graph]]).")
        config.graph_faults = [parse_rule(rule) for rule in graph]
        if (table := self._fault_table("notifications")) is not None:
            config.notification_faults = NotificationFaults.parse(table)
        if (table := self._fault_table("signing")) is not None:
            config.signing_faults = SigningFaults.parse(table)
        if (table := self._fault_table("media")) is not None:
            config.media_impairment = Impairment.parse(table)

    def _fault_table(self, key: str) -> dict[str, Any] | None:
        table = self.faults.get(key)
        if table is not None and not isinstance(table, dict):
            raise BadRequest(f"{key} must be a table.")
        return table

    def meeting(self, name: str | None = None) -> Meeting:
        """A meeting by its name in the file (the first one without a name)."""
        if not self.meetings:
            raise ScenarioError(f"scenario {self.name} has no meeting")
        if name is None:
            return self.meetings[0]
        thread = _thread_id(self, name)
        for meeting in self.meetings:
            if meeting.thread_id == thread:
                return meeting
        raise ScenarioError(f"scenario {self.name} has no meeting {name!r}")

    def participant(self, name: str) -> ParticipantScript:
        """A participant (of any meeting or incoming call) by its name in the file."""
        pid = self.stable_id(name)
        scripts = [p for m in self.meetings for p in m.participants]
        scripts += [s for c in self.incoming for s in (c.caller, *c.group)]
        for script in scripts:
            if script.participant_id == pid:
                return script
        raise ScenarioError(f"scenario {self.name} has no participant {name!r}")


def names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS_DIR.glob("*.toml"))


def load(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a scenario file by path. Raises ScenarioError."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SCENARIOS_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ScenarioError(
                f"no scenario named {name_or_path!r}; shipped: {', '.join(names())}"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse(data, path.stem, path.parent, path)


def parse(data: dict[str, Any], name: str, base: Path, path: Path | None = None) -> Scenario:
    reader = _Reader(str(path or name))
    scenario = Scenario(
        name=reader.text(data, "name", default=name),
        description=reader.text(data, "description", default=""),
        path=path,
    )
    known = {"name", "description", "time_scale", "apps", "meetings", "incoming", "targets"}
    reader.only(data, known | {"faults", "bot", "expect"}, "the top level")
    if "time_scale" in data:
        scenario.time_scale = reader.number(data, "time_scale", low=1e-4, high=10.0)
    for i, app in enumerate(reader.tables(data, "apps")):
        where = f"apps[{i}]"
        reader.only(app, {"app_id", "secret", "tenant_id"}, where)
        registration = AppRegistration(
            reader.text(app, "app_id", where=where),
            reader.text(app, "secret", where=where),
            reader.text(app, "tenant_id", where=where),
        )
        scenario.apps[registration.app_id] = registration
    tenant = next(iter(scenario.apps.values())).tenant_id if scenario.apps else None
    for i, table in enumerate(reader.tables(data, "meetings")):
        scenario.meetings.append(_meeting(reader, scenario, table, f"meetings[{i}]", base, tenant))
    for i, table in enumerate(reader.tables(data, "incoming")):
        scenario.incoming.append(_incoming(reader, scenario, table, f"incoming[{i}]", base))
    for i, target in enumerate(reader.tables(data, "targets")):
        where = f"targets[{i}]"
        reader.only(target, {"user_id", "accepts"}, where)
        if not reader.flag(target, "accepts", default=True, where=where):
            scenario.declining_users.add(reader.text(target, "user_id", where=where))
    for key in ("faults", "bot", "expect"):
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise ScenarioError(f"{reader.source}: {key} must be a table")
        setattr(scenario, key, value)
    reader.only(scenario.faults, {"graph", "notifications", "media", "signing"}, "faults")
    return scenario


def _thread_id(scenario: Scenario, name: str) -> str:
    token = uuid.uuid5(NAMESPACE, f"{scenario.name}/meeting/{name}").hex
    return f"19:meeting_{token}@thread.v2"


def _meeting(
    reader: _Reader,
    scenario: Scenario,
    table: dict[str, Any],
    where: str,
    base: Path,
    tenant: str | None,
) -> Meeting:
    reader.only(
        table,
        {"name", "subject", "tenant_id", "join_meeting_id", "passcode", "participants", "events"},
        where,
    )
    name = reader.text(table, "name", default="meeting", where=where)
    meeting = Meeting(
        thread_id=_thread_id(scenario, name),
        organizer_id=scenario.stable_id(f"organizer/{name}"),
        tenant_id=reader.text(table, "tenant_id", default=tenant or "", where=where),
        join_meeting_id=reader.optional_text(table, "join_meeting_id", where),
        passcode=reader.optional_text(table, "passcode", where),
        subject=reader.optional_text(table, "subject", where),
    )
    people = reader.tables(table, "participants", where)
    if len(people) > MAX_PARTICIPANTS:
        raise ScenarioError(f"{reader.source}: {where}: at most {MAX_PARTICIPANTS} participants")
    for i, person in enumerate(people):
        script = _participant(reader, scenario, person, f"{where}.participants[{i}]", base)
        if any(p.participant_id == script.participant_id for p in meeting.participants):
            raise ScenarioError(f"{reader.source}: {where}: two participants are {person['id']}")
        meeting.participants.append(script)
    _check_msis(reader, meeting.participants, where)
    events = reader.tables(table, "events", where)
    if len(events) > MAX_EVENTS:
        raise ScenarioError(f"{reader.source}: {where}: at most {MAX_EVENTS} events")
    ids = {p.participant_id: p for p in meeting.participants}
    for i, entry in enumerate(events):
        at = f"{where}.events[{i}]"
        reader.only(entry, {"at", "participant", "action"}, at)
        action = reader.text(entry, "action", where=at)
        if action not in ACTIONS or action in ("join", "leave"):
            allowed = ", ".join(a for a in ACTIONS if a not in ("join", "leave"))
            raise ScenarioError(
                f"{reader.source}: {at}: action must be one of {allowed} "
                "(joins and leaves are the participant's join and leave keys)"
            )
        pid = scenario.stable_id(reader.text(entry, "participant", where=at))
        if pid not in ids:
            raise ScenarioError(f"{reader.source}: {at}: no participant {entry['participant']!r}")
        meeting.events.append(MeetingEvent(reader.number(entry, "at", where=at), pid, action))
    return meeting


def _participant(
    reader: _Reader, scenario: Scenario, table: dict[str, Any], where: str, base: Path
) -> ParticipantScript:
    reader.only(
        table,
        {"id", "name", "kind", "user_id", "number", "msi", "seed", "voice", "talk", "join"}
        | {"leave", "camera", "screen"},
        where,
    )
    key = reader.text(table, "id", where=where)
    kind = reader.text(table, "kind", default="user", where=where)
    if kind not in IDENTITY_KINDS:
        raise ScenarioError(f"{reader.source}: {where}: kind must be one of {IDENTITY_KINDS}")
    if kind == "phone":
        user_id = reader.text(table, "number", where=where)
        if not (user_id.startswith("+") and user_id[1:].isdigit()):
            raise ScenarioError(f"{reader.source}: {where}: number must be E.164, e.g. +1425...")
    else:
        user_id = reader.text(
            table, "user_id", default=scenario.stable_id(f"user/{key}"), where=where
        )
    msi = reader.integer(table, "msi", low=1, high=2**32 - 2, where=where)
    voice = reader.text(table, "voice", default=SYNTHETIC, where=where)
    if voice not in (SYNTHETIC, SILENCE):
        wav = Path(voice) if Path(voice).is_absolute() else base / voice
        if not wav.is_file():
            raise ScenarioError(f"{reader.source}: {where}: voice file {wav} does not exist")
    script = ParticipantScript(
        display_name=reader.text(table, "name", default=key, where=where),
        user_id=user_id,
        msi=msi,
        participant_id=scenario.stable_id(key),
        seed=reader.integer(table, "seed", low=0, high=2**31, default=msi, where=where),
        talk=_talk(reader, table, where),
        identity_kind=kind,
        voice=None if voice == SYNTHETIC else voice,
        voice_base=base,
        joins_at=reader.number(table, "join", default=0.0, where=where),
        leaves_at=reader.optional_number(table, "leave", where),
    )
    if script.leaves_at is not None and script.leaves_at <= script.joins_at:
        raise ScenarioError(f"{reader.source}: {where}: leave must come after join")
    camera = table.get("camera")
    if camera is not None:
        at = f"{where}.camera"
        if not isinstance(camera, dict):
            raise ScenarioError(f"{reader.source}: {at} must be a table")
        reader.only(camera, {"msi", "width", "height"}, at)
        script.video_msi = reader.integer(camera, "msi", low=1, high=2**32 - 2, where=at)
        script.camera = (
            reader.integer(camera, "width", low=16, high=3840, default=1280, where=at),
            reader.integer(camera, "height", low=16, high=2160, default=720, where=at),
        )
    screen = table.get("screen")
    if screen is not None:
        at = f"{where}.screen"
        if not isinstance(screen, dict):
            raise ScenarioError(f"{reader.source}: {at} must be a table")
        reader.only(screen, {"msi"}, at)
        script.screen_msi = reader.integer(screen, "msi", low=1, high=2**32 - 2, where=at)
    return script


def _talk(
    reader: _Reader, table: dict[str, Any], where: str
) -> tuple[tuple[float, float], ...] | None:
    talk = table.get("talk", "always")
    if talk == "always":
        return None
    if talk == "never":
        return ()
    if not isinstance(talk, list):
        raise ScenarioError(
            f'{reader.source}: {where}: talk must be "always", "never" or [[start, end], ...]'
        )
    spurts: list[tuple[float, float]] = []
    for spurt in talk:
        if (
            not isinstance(spurt, list)
            or len(spurt) != 2
            or not all(_is_number(x) for x in spurt)
            or not 0 <= spurt[0] < spurt[1]
        ):
            raise ScenarioError(
                f"{reader.source}: {where}: each talk spurt is [start, end] seconds, start < end"
            )
        spurts.append((float(spurt[0]), float(spurt[1])))
    return tuple(sorted(spurts))


def _check_msis(reader: _Reader, scripts: list[ParticipantScript], where: str) -> None:
    seen: set[int] = set()
    for script in scripts:
        for msi in (script.msi, script.video_msi, script.screen_msi):
            if msi is None:
                continue
            if msi in seen:
                raise ScenarioError(f"{reader.source}: {where}: MSI {msi} is used twice")
            seen.add(msi)


def _incoming(
    reader: _Reader, scenario: Scenario, table: dict[str, Any], where: str, base: Path
) -> IncomingCall:
    reader.only(table, {"at", "caller", "policy_recording", "app_id", "group"}, where)
    caller = table.get("caller")
    if not isinstance(caller, dict):
        raise ScenarioError(f"{reader.source}: {where}: caller must be a participant table")
    call = IncomingCall(
        at=reader.number(table, "at", default=0.0, where=where),
        caller=_participant(reader, scenario, caller, f"{where}.caller", base),
        policy_recording=reader.flag(table, "policy_recording", default=False, where=where),
        app_id=reader.optional_text(table, "app_id", where),
    )
    for i, person in enumerate(reader.tables(table, "group", where)):
        call.group.append(_participant(reader, scenario, person, f"{where}.group[{i}]", base))
    if call.group and not call.policy_recording:
        raise ScenarioError(f"{reader.source}: {where}: group is for policy_recording calls")
    _check_msis(reader, [call.caller, *call.group], where)
    return call


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Reader:
    """Typed reads from parsed TOML, with errors that say which file and entry is wrong."""

    _MISSING = object()

    def __init__(self, source: str) -> None:
        self.source = source

    def _get(self, table: dict[str, Any], key: str, default: Any, where: str) -> Any:
        value = table.get(key, default)
        if value is self._MISSING:
            raise ScenarioError(f"{self.source}: {where}: {key} is required")
        return value

    def only(self, table: dict[str, Any], keys: set[str], where: str) -> None:
        unknown = sorted(set(table) - keys)
        if unknown:
            raise ScenarioError(
                f"{self.source}: {where}: unknown key(s) {', '.join(unknown)}; "
                f"expected {', '.join(sorted(keys))}"
            )

    def text(
        self, table: dict[str, Any], key: str, default: Any = _MISSING, where: str = ""
    ) -> str:
        value = self._get(table, key, default, where or "the top level")
        if not isinstance(value, str):
            raise ScenarioError(f"{self.source}: {where or 'the top level'}: {key} must be text")
        return value

    def optional_text(self, table: dict[str, Any], key: str, where: str) -> str | None:
        return None if table.get(key) is None else self.text(table, key, where=where)

    def flag(
        self, table: dict[str, Any], key: str, default: Any = _MISSING, where: str = ""
    ) -> bool:
        value = self._get(table, key, default, where)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.source}: {where}: {key} must be true or false")
        return value

    def number(
        self,
        table: dict[str, Any],
        key: str,
        default: Any = _MISSING,
        where: str = "",
        low: float = 0.0,
        high: float = 86_400.0,
    ) -> float:
        value = self._get(table, key, default, where or "the top level")
        if not _is_number(value) or not low <= value <= high:
            raise ScenarioError(
                f"{self.source}: {where or 'the top level'}: {key} must be a number "
                f"from {low:g} to {high:g}"
            )
        return float(value)

    def optional_number(self, table: dict[str, Any], key: str, where: str) -> float | None:
        return None if table.get(key) is None else self.number(table, key, where=where)

    def integer(
        self,
        table: dict[str, Any],
        key: str,
        low: int,
        high: int,
        default: Any = _MISSING,
        where: str = "",
    ) -> int:
        value = self._get(table, key, default, where)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ScenarioError(
                f"{self.source}: {where}: {key} must be a whole number from {low} to {high}"
            )
        return value

    def tables(self, table: dict[str, Any], key: str, where: str = "") -> list[dict[str, Any]]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ScenarioError(
                f"{self.source}: {where or 'the top level'}: {key} must be an array of tables "
                f"([[{key}]])"
            )
        return value
