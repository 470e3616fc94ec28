"""Settings from environment variables, an optional env file and an optional TOML file,
typed and range-checked in one place.

Names follow what Graph media-bot developers configure on Windows (AppId, AppSecret, ServiceFqdn,
InstancePublicIPAddress, InstanceInternalPort, InstancePublicPort, callback URL), prefixed BOT_.
Every default points at a locally run emulator (`python -m emulator serve`).

Precedence, highest first: values given in code (`Settings(...)`), `BOT_*` environment
variables, the env file (`--env-file` or `BOT_ENV_FILE`, `BOT_*=value` lines), the TOML file
(`--config` or `BOT_CONFIG`, keys are the lowercase field names: `webhook_port = 9441`), the
defaults. `Settings(...)` alone reads nothing from the environment: only `Settings.load()` does,
so code and tests get exactly what they pass.

pydantic-settings parses the environment (https://docs.pydantic.dev/latest/concepts/pydantic_settings/);
every mistake becomes one SettingsError that names the setting as the user wrote it and the
value (secrets as ***). docs/settings.md is generated from the fields (`python -m bot settings
--reference`) and a test keeps it equal.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.settings_sources import (
    ENV_PREFIX,
    LOADING,
    META_VARIABLES,
    ORIGIN,
    SECRET,
    MappingEnvSource,
    Origin,
    SettingsError,
    TomlSource,
    describe,
    did_you_mean,
    field_of,
    is_secret,
    loading,
    read_env_file,
    read_toml,
)
from media.frames import AUDIO_FRAME_MS
from media.listener import ListenerLimits
from media.pipeline.vad import VadSettings

EMULATOR_URL = "https://localhost:9443"

logger = logging.getLogger(__name__)


Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(allow_inf_nan=False)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # -- identity (the app registration) ----------------------------------------------------
    app_id: str = Field(
        "00000000-0000-0000-0000-00000000b07a",
        min_length=1,
        description="the bot's app registration (client) id",
    )
    app_secret: str = Field(
        "emulator-secret",
        min_length=1,
        description="the app's client secret (unused when an app certificate is set)",
        json_schema_extra={"secret": True},
    )
    app_certificate_file: str | None = Field(
        None, description="PEM with private key and certificate, used instead of the secret"
    )
    tenant_id: str = Field(
        "00000000-0000-0000-0000-0000000000e1",
        min_length=1,
        description="the tenant the bot's calls and tokens belong to",
    )
    # -- where Graph is ----------------------------------------------------------------------
    graph_url: str = Field(
        f"{EMULATOR_URL}/v1.0",
        description="Graph base URL (`https://graph.microsoft.com/v1.0` in production)",
    )
    authority_url: str = Field(
        EMULATOR_URL, description="login authority (`https://login.microsoftonline.com`)"
    )
    notification_openid_url: str = Field(
        f"{EMULATOR_URL}/v1/.well-known/OpenIdConfiguration",
        description="notification signing keys "
        "(`https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration`)",
    )
    ca_file: str | None = Field(
        None, description="CA bundle to trust for the three URLs above instead of the system's"
    )
    # -- the bot's own endpoints -------------------------------------------------------------
    service_fqdn: str = Field(
        "localhost",
        min_length=1,
        description="the name in the certificate, in `mpUri` and in the callback URL",
    )
    cert_file: str | None = Field(
        None, description="PEM certificate chain for the service FQDN (webhook and media)"
    )
    key_file: str | None = Field(None, description="PEM private key for `cert_file`")
    webhook_host: str = Field("127.0.0.1", description="address the notification webhook binds")
    webhook_port: Port = Field(9441, description="port of the notification webhook (0: any)")
    callback_url: str | None = Field(
        None,
        description="the webhook URL Graph posts to; default "
        "`https://{service_fqdn}:{webhook_port}/api/calling`",
    )
    instance_internal_port: Port = Field(
        8445, description="TLS media-control endpoint, bound (0: any)"
    )
    instance_public_port: Port | None = Field(
        None, description="the same endpoint's port as advertised (behind NAT); default: bound"
    )
    instance_public_ip: str | None = Field(
        None, description="the VM's public IP (1:1 NAT), advertised in every media candidate"
    )
    media_bind_host: str = Field(
        "127.0.0.1", description="address the media-control endpoint binds"
    )
    media_port_min: Port | None = Field(
        None, description="lowest UDP port for media (one firewall rule); none: any free port"
    )
    media_port_max: Port | None = Field(None, description="highest UDP port for media")
    media_host_addresses: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="limit media host candidates to these addresses, comma-separated, "
        "loopback allowed (`127.0.0.1`); none: every non-loopback interface",
    )
    # -- listener limits (the webhook and the media-control endpoint, each) ------------------
    listener_max_connections: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="connections one listener holds at once; at the cap a new one closes the "
        "oldest idle one, or is reset",
    )
    listener_max_connections_per_ip: int = Field(
        64, ge=1, le=1_000_000, description="connections one listener holds from one address"
    )
    listener_reserved_files: int = Field(
        256,
        ge=16,
        le=1_000_000,
        description="files kept free for calls: the listeners together hold at most "
        "RLIMIT_NOFILE minus this (minus half the limit if that is less)",
    )
    listener_handshake_timeout_seconds: Seconds = Field(
        10.0, gt=0, le=300, description="a TLS handshake not done in this is aborted"
    )
    listener_header_timeout_seconds: Seconds = Field(
        10.0,
        gt=0,
        le=300,
        description="a request's header not complete this long after its first byte: closed",
    )
    listener_body_timeout_seconds: Seconds = Field(
        30.0, gt=0, le=3600, description="a request's body not complete in this: closed"
    )
    listener_idle_timeout_seconds: Seconds = Field(
        120.0,
        gt=0,
        le=3600,
        description="a connection with no request for this long (new or keep-alive): closed",
    )
    listener_hello_timeout_seconds: Seconds = Field(
        10.0,
        gt=0,
        le=300,
        description="a media-control WebSocket without its hello in this: rejected",
    )
    auth_failures_per_minute: Seconds = Field(
        30.0,
        ge=0,
        le=100_000,
        description="failed authentications one address may make per minute (a minute's worth "
        "at once) before it is refused at accept; 0: unlimited",
    )
    # -- notifications and call handling -----------------------------------------------------
    notification_leeway_seconds: Seconds = Field(
        300.0,
        ge=0,
        le=3600,
        description="clock skew allowed on notification tokens (the .NET SDK's default)",
    )
    notification_key_refresh_seconds: Seconds = Field(
        5.0,
        ge=0,
        le=60,
        description="after a burst of 3, at most one signing-key fetch per this for unknown key "
        "ids (forged tokens); a new genuine key id waits at most about this for the next fetch",
    )
    allowed_tenants: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="tenant ids (GUIDs, comma-separated) whose notifications are accepted; "
        "none: any tenant's (a multi-tenant app)",
    )
    incoming_call_fallback: Literal["answer", "reject"] = Field(
        "answer", description="`answer` or `reject` an incoming call nobody decided on in time"
    )
    unknown_calls: Literal["ignore", "adopt", "hangup"] = Field(
        "ignore",
        description="notifications for a call this process never created or answered (another "
        "instance's, or before a restart): `ignore` them, `adopt` the call (track it, no media) "
        "or `hangup` (DELETE it); see docs/signaling.md",
    )
    media_lost_timeout_seconds: Seconds = Field(
        15.0,
        gt=0,
        description="the media processor vanished and Graph has not ended the call: "
        "hang up after this",
    )
    state_reconcile_seconds: Seconds = Field(
        10.0,
        ge=0,
        description="a state Graph should have notified but has not (a lost notification): "
        "read the call back after this (0: never)",
    )
    shutdown_timeout_seconds: Seconds = Field(
        10.0,
        gt=0,
        description="on stop (SIGTERM, Ctrl-C): how long to wait for Graph to confirm the "
        "hang-ups and recording statuses",
    )
    # -- the processing pipeline (docs/processors.md) ----------------------------------------
    processors: str = Field(
        "",
        description="processors for every call: `bot.processors` entry-point names or "
        "dotted paths, comma-separated (`recorder,timeline,mypkg.mod:Thing`); "
        "`python -m bot processors` lists them",
    )
    processor_options: str = Field("", description="their options, `name.key=value;name.key=value`")
    recordings_dir: str = Field(
        "recordings", description="where recorders write (one directory per media session)"
    )
    record_on_join: bool = Field(
        True,
        description="with a recorder in the pipeline: set the recording status once "
        "established, record once Graph acknowledges it",
    )
    vad_mode: int = Field(2, ge=0, le=3, description="webrtcvad aggressiveness, 0 to 3")
    vad_start_ms: int = Field(
        60, description="voiced audio that opens a speech segment (a multiple of 20 ms)"
    )
    vad_stop_ms: int = Field(
        400, description="unvoiced audio that closes one (a multiple of 20 ms)"
    )
    vad_energy_floor_dbfs: float = Field(
        -50.0, ge=-120, le=0, allow_inf_nan=False, description="RMS below this is never speech"
    )
    gc_freeze: bool = Field(
        True,
        description="`gc.freeze()` after start-up (undone at stop): short full-GC pauses "
        "under load",
    )
    # -- logs ---------------------------------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        "text", description="`text`, or `json` for one JSON object per line on stderr"
    )
    log_levels: str = Field(
        "",
        description="logger levels, `name=LEVEL,...` (`aioice=DEBUG`); third-party loggers "
        "are at WARNING unless named here",
    )

    # -- where values come from (only Settings.load() reads the environment and files) -------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        extra = LOADING.get()
        return (init_settings, *extra(settings_cls)) if extra is not None else (init_settings,)

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        toml_path: str | None = None,
        env_file: str | None = None,
    ) -> Settings:
        """Environment over env file over TOML over defaults. Raises SettingsError."""
        env = os.environ if env is None else env
        origin = Origin()
        toml_path = toml_path or env.get("BOT_CONFIG") or None
        env_file = env_file or env.get("BOT_ENV_FILE") or None
        toml = read_toml(toml_path, cls.model_fields, "--config/BOT_CONFIG") if toml_path else {}
        from_file = read_env_file(env_file, cls.model_fields) if env_file else {}
        for name in toml:
            origin.place[name] = (name, toml_path)
        for key in from_file:
            origin.place[field_of(key)] = (key.upper(), env_file)
        for key in env:
            if key.upper().startswith(ENV_PREFIX) and key.upper() not in META_VARIABLES:
                if field_of(key) in cls.model_fields:
                    origin.place[field_of(key)] = (key.upper(), None)
                else:
                    logger.warning(
                        "%s is not a setting and is ignored%s",
                        key,
                        did_you_mean(key, cls.model_fields),
                    )

        def sources(settings_cls: type[BaseSettings]) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                MappingEnvSource(settings_cls, env),
                MappingEnvSource(settings_cls, from_file),
                TomlSource(settings_cls, toml),
            )

        with loading(sources, origin):
            return cls()

    def __init__(self, **values: Any) -> None:
        """Fields by name (nothing read from the environment). Raises SettingsError."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            origin = ORIGIN.get() or Origin()
            raise SettingsError(describe(exc, origin, type(self).model_fields)) from None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Fields by name, values as text or typed (a TOML table, a test's dict)."""
        return cls(**values)

    # -- checks --------------------------------------------------------------------------------

    @field_validator(
        "app_certificate_file",
        "ca_file",
        "cert_file",
        "key_file",
        "callback_url",
        "instance_public_port",
        "instance_public_ip",
        "media_port_min",
        "media_port_max",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # BOT_CERT_FILE= (empty) means "not set" for what may be left unset; an empty
        # BOT_APP_SECRET stays an error rather than silently meaning the emulator's.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vad_start_ms", "vad_stop_ms")
    @classmethod
    def _frames(cls, value: int) -> int:
        if value < AUDIO_FRAME_MS or value % AUDIO_FRAME_MS:
            raise ValueError(f"must be a positive multiple of {AUDIO_FRAME_MS} ms")
        return value

    @field_validator("allowed_tenants", mode="before")
    @classmethod
    def _split_tenants(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_tenants")
    @classmethod
    def _tenants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        tenants = []
        for tenant in value:
            try:
                tenants.append(str(uuid.UUID(tenant)))  # lower case: compared without case
            except ValueError:
                raise ValueError(f"{tenant!r} is not a tenant id (a GUID)") from None
        return tuple(tenants)

    @field_validator("media_host_addresses", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("media_host_addresses")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            _ip(address)
        return value

    @field_validator("instance_public_ip")
    @classmethod
    def _public_ip(cls, value: str | None) -> str | None:
        try:
            return None if value is None else str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError("is not an IP address") from None

    @field_validator("webhook_host", "media_bind_host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.fullmatch(value):
                raise ValueError("must be an IP address or a host name") from None
        return value

    @field_validator("graph_url", "authority_url", "notification_openid_url", "callback_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            # Graph posts notifications only to https callbacks, and tokens travel on these.
            raise ValueError("must be an https:// URL with a host")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise ValueError("has a port that is not a number from 0 to 65535") from None
        return value.rstrip("/") if value.endswith("/") and parts.path in ("", "/") else value

    @field_validator("ca_file", "app_certificate_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value)
        if not path.exists():
            raise ValueError("no such file")
        if not path.is_file():
            raise ValueError("is not a file")
        try:
            with path.open("rb") as handle:
                head = handle.read(4096)
        except OSError as exc:
            raise ValueError(f"cannot be read ({exc.strerror})") from None
        if b"-----BEGIN" not in head:
            raise ValueError("is not a PEM file (no -----BEGIN line)")
        return value

    @field_validator("processors", "processor_options")
    @classmethod
    def _plugins(cls, value: str, info: ValidationInfo) -> str:
        """Every named processor imports, and its options parse: a typo fails at start."""
        from media.pipeline import plugins

        try:
            if info.field_name == "processors":
                for spec in plugins.parse_specs(value):
                    plugins.load_factory(spec)
            else:
                plugins.parse_options(value)
        except plugins.ProcessorSpecError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("log_levels")
    @classmethod
    def _log_levels(cls, value: str) -> str:
        from bot.logs import parse_levels

        parse_levels(value)
        return value

    @field_validator("recordings_dir")
    @classmethod
    def _recordings_dir(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        path = Path(value)
        if path.exists() and not path.is_dir():
            raise ValueError("exists and is not a directory")
        return value

    @model_validator(mode="after")
    def _together(self) -> Settings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("{cert_file} and {key_file} go together: set both or neither")
        if self.cert_file is not None:
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                    self.cert_file, self.key_file
                )
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"{{cert_file}}={self.cert_file} and {{key_file}}={self.key_file}: not a "
                    f"certificate chain and its private key "
                    f"({_ssl_reason(exc)})"
                ) from None
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"{{ca_file}}={self.ca_file}: no CA certificate in it ({_ssl_reason(exc)})"
                ) from None
        if (self.media_port_min is None) != (self.media_port_max is None):
            raise ValueError(
                "{media_port_min} and {media_port_max} go together: set both or neither"
            )
        if self.media_port_min is not None and self.media_port_max is not None:
            if not 1 <= self.media_port_min <= self.media_port_max:
                raise ValueError(
                    f"{{media_port_min}}..{{media_port_max}} must be a range of ports from 1 "
                    f"up, got {self.media_port_min}..{self.media_port_max}"
                )
        return self

    def vad(self) -> VadSettings:
        """The VAD's settings (raises ValueError for an unusable combination)."""
        return VadSettings(
            mode=self.vad_mode,
            start_ms=self.vad_start_ms,
            stop_ms=self.vad_stop_ms,
            energy_floor_dbfs=self.vad_energy_floor_dbfs,
        )

    def listener_limits(self) -> ListenerLimits:
        """The limits every listener gets (media/listener.py)."""
        return ListenerLimits(
            max_connections=self.listener_max_connections,
            max_connections_per_address=self.listener_max_connections_per_ip,
            reserved_files=self.listener_reserved_files,
            handshake_timeout_seconds=self.listener_handshake_timeout_seconds,
            header_timeout_seconds=self.listener_header_timeout_seconds,
            body_timeout_seconds=self.listener_body_timeout_seconds,
            idle_timeout_seconds=self.listener_idle_timeout_seconds,
            auth_failures_per_minute=self.auth_failures_per_minute,
        )

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed, checked again. Raises SettingsError."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(changes)
        return type(self)(**values)

    def redacted(self) -> dict[str, Any]:
        """Every field as BOT_NAME -> value, secrets as ***: for `python -m bot settings`."""
        return {
            ENV_PREFIX + name.upper(): SECRET if is_secret(info) else getattr(self, name)
            for name, info in type(self).model_fields.items()
        }


def _ssl_reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*"
)


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None
