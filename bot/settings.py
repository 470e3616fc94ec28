"""Settings from environment variables and an optional TOML file (DESIGN.md section 7).

Names follow what Graph media-bot developers configure on Windows (AppId, AppSecret, ServiceFqdn,
InstancePublicIPAddress, InstanceInternalPort, InstancePublicPort, callback URL), prefixed BOT_.
Every default points at a locally run emulator (`python -m emulator serve`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from media.pipeline.vad import VadSettings

ENV_PREFIX = "BOT_"
EMULATOR_URL = "https://localhost:9443"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class Settings:
    app_id: str = "00000000-0000-0000-0000-00000000b07a"
    app_secret: str = "emulator-secret"
    app_certificate_file: str | None = None  # PEM key + certificate: used instead of the secret
    tenant_id: str = "00000000-0000-0000-0000-0000000000e1"
    graph_url: str = f"{EMULATOR_URL}/v1.0"
    authority_url: str = EMULATOR_URL  # login.microsoftonline.com in production
    notification_openid_url: str = f"{EMULATOR_URL}/v1/.well-known/OpenIdConfiguration"
    ca_file: str | None = None  # CA bundle for Graph, login and OpenID instead of the system's
    service_fqdn: str = "localhost"
    instance_public_ip: str | None = None  # advertised in media candidates (1:1 NAT)
    media_port_min: int | None = None  # UDP range for all media; None: any free port
    media_port_max: int | None = None
    instance_internal_port: int = 8445
    instance_public_port: int | None = None
    media_bind_host: str = "127.0.0.1"
    cert_file: str | None = None  # PEM chain for service_fqdn: webhook and media endpoint
    key_file: str | None = None
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 9441
    callback_url: str | None = None  # default https://{service_fqdn}:{webhook port}/api/calling
    notification_leeway_seconds: float = 300.0  # .NET's default clock skew (reliability.md 1.1)
    incoming_call_fallback: str = "answer"  # "answer" or "reject": when no handler decides in time
    # A call whose media session failed or closed under it (the media processor vanished) waits
    # this long for Graph to end it, then the bot hangs up itself.
    media_lost_timeout_seconds: float = 15.0
    # A state Graph should have notified by now (established after a join or answer, terminated
    # after a hang-up) is read back with GET after this long: its notification was lost or
    # refused (bot/reconcile.py). 0 turns it off.
    state_reconcile_seconds: float = 10.0
    # Notification keys are fetched again for an unknown kid at most this often (the first
    # unknown kid after start-up at once), so forged kids cannot hammer the key endpoint.
    notification_key_refresh_seconds: float = 60.0
    # The processing pipeline (docs/processors.md). Processors by entry-point name or dotted
    # path, comma-separated, and their options as name.key=value;name.key=value.
    processors: str = ""
    processor_options: str = ""
    recordings_dir: str = "recordings"
    # With a recording processor in the pipeline, set the call's recording status to
    # `recording` once it is established and start recording when Graph acknowledges it.
    record_on_join: bool = True
    # Voice activity (media/pipeline/vad.py): webrtcvad aggressiveness 0..3, hysteresis, floor.
    vad_mode: int = 2
    vad_start_ms: int = 60
    vad_stop_ms: int = 400
    vad_energy_floor_dbfs: float = -50.0
    # gc.freeze() once started (gc.unfreeze() at stop): full collections then skip everything
    # alive at start-up, which keeps their pauses short enough for the hot loop and webhook.
    gc_freeze: bool = True

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, toml_path: str | None = None) -> Settings:
        """TOML values first, environment variables over them. Raises SettingsError."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = toml_path or env.get(ENV_PREFIX + "CONFIG")
        if path:
            try:
                values.update(tomllib.loads(Path(path).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise SettingsError(f"cannot read settings file {path}: {exc}") from None
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = env[name]
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        parsed: dict[str, Any] = {}
        for name, value in values.items():
            kind = str(known[name].type)
            if kind == "bool":
                parsed[name] = _boolean(name, value)
            elif "int" in kind and value is not None:
                try:
                    parsed[name] = int(value)
                except (TypeError, ValueError):
                    raise SettingsError(f"{name} must be an integer, got {value!r}") from None
                if not 0 <= parsed[name] <= 65535 and name.endswith("port"):
                    raise SettingsError(f"{name} must be a port number, got {value!r}")
            elif "float" in kind:
                try:
                    parsed[name] = float(value)
                except (TypeError, ValueError):
                    raise SettingsError(f"{name} must be a number, got {value!r}") from None
            else:
                parsed[name] = None if value == "" else value
        settings = cls(**parsed)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("graph_url", "authority_url", "notification_openid_url"):
            if not str(getattr(self, name)).startswith("https://"):
                raise SettingsError(f"{name} must be an https URL")
        if self.callback_url is not None and not self.callback_url.startswith("https://"):
            raise SettingsError("callback_url must be an https URL (Graph requires it)")
        if (self.cert_file is None) != (self.key_file is None):
            raise SettingsError("cert_file and key_file go together")
        if self.incoming_call_fallback not in ("answer", "reject"):
            raise SettingsError("incoming_call_fallback must be answer or reject")
        if not self.media_lost_timeout_seconds > 0:
            raise SettingsError("media_lost_timeout_seconds must be above 0")
        for name in ("state_reconcile_seconds", "notification_key_refresh_seconds"):
            if not getattr(self, name) >= 0:
                raise SettingsError(f"{name} must be 0 or more seconds")
        for name in ("app_id", "app_secret", "tenant_id", "service_fqdn"):
            if not getattr(self, name):
                raise SettingsError(f"{name} must not be empty")
        self.vad()

    def vad(self) -> VadSettings:
        try:
            return VadSettings(
                mode=self.vad_mode,
                start_ms=self.vad_start_ms,
                stop_ms=self.vad_stop_ms,
                energy_floor_dbfs=self.vad_energy_floor_dbfs,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
