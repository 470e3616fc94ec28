"""Where settings come from and how their mistakes read: the sources Settings.load() gives
pydantic-settings (the environment as a mapping, the env file, the TOML file), and the one-line
SettingsError messages that name a setting as the user wrote it, with its value."""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "BOT_"
# Read by Settings.load() itself, never fields: where the other settings come from.
META_VARIABLES = ("BOT_CONFIG", "BOT_ENV_FILE")
SECRET = "***"
Fields = Mapping[str, FieldInfo]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and its value, in one line."""


# -- sources -------------------------------------------------------------------------------

LOADING: ContextVar[Callable[[type[BaseSettings]], tuple[PydanticBaseSettingsSource, ...]] | None]
LOADING = ContextVar("settings_sources", default=None)


ORIGIN: ContextVar[Origin | None] = ContextVar("settings_origin", default=None)


@contextmanager
def loading(
    sources: Callable[[type[BaseSettings]], tuple[PydanticBaseSettingsSource, ...]],
    origin: Origin,
) -> Iterator[None]:
    tokens = LOADING.set(sources), ORIGIN.set(origin)
    try:
        yield
    finally:
        LOADING.reset(tokens[0])
        ORIGIN.reset(tokens[1])


class MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ:
    Settings.load(env=...) and the env file go through the same parsing as the process
    environment."""

    def __init__(self, settings_cls: type[BaseSettings], variables: Mapping[str, str]) -> None:
        self._variables = variables  # read by _load_env_vars() inside super().__init__
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._variables, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class TomlSource(PydanticBaseSettingsSource):
    """The TOML file's table, already read and checked by read_toml()."""

    def __init__(self, settings_cls: type[BaseSettings], values: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = dict(values)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def read_toml(path: str, fields: Fields, setting: str) -> dict[str, Any]:
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"{setting}={path}: no such file") from None
    except OSError as exc:
        raise SettingsError(f"{setting}={path}: cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{setting}={path}: not valid TOML ({exc})") from None
    for key, value in values.items():
        if key not in fields:
            hint = did_you_mean(key, fields, toml=True)
            raise SettingsError(
                f"{path}: {key} is not a setting{hint} (TOML keys are the lowercase setting "
                f"names without BOT_, listed in docs/settings.md)"
            )
        if isinstance(value, dict | list) and key != "media_host_addresses":
            raise SettingsError(f"{path}: {key} must be a single value, not a table or list")
    return values


def read_env_file(path: str, fields: Fields) -> dict[str, str]:
    file = Path(path)
    if not file.is_file():
        raise SettingsError(f"--env-file/BOT_ENV_FILE={path}: no such file")
    try:
        raw = dotenv_values(file)
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"--env-file/BOT_ENV_FILE={path}: cannot be read ({exc})") from None
    values: dict[str, str] = {}
    for key, value in raw.items():
        if key.upper() in META_VARIABLES:
            continue
        if not key.upper().startswith(ENV_PREFIX) or field_of(key) not in fields:
            raise SettingsError(f"{path}: {key} is not a setting{did_you_mean(key, fields)}")
        values[key] = value or ""
    return values


# -- messages ------------------------------------------------------------------------------


class Origin:
    """Where each field's value came from, to name it as the user wrote it."""

    def __init__(self) -> None:
        self.place: dict[str, tuple[str, str | None]] = {}  # field -> (as written, file)

    def name(self, field: str) -> str:
        return self.place.get(field, (ENV_PREFIX + field.upper(), None))[0]

    def label(self, field: str, shown: str) -> str:
        """`NAME=value`, and ` in FILE` for a value from the env file or the TOML file."""
        name, file = self.place.get(field, (ENV_PREFIX + field.upper(), None))
        return f"{name}={shown}" + (f" in {file}" if file else "")


def field_of(variable: str) -> str:
    return variable.upper().removeprefix(ENV_PREFIX).lower()


def did_you_mean(key: str, fields: Fields, toml: bool = False) -> str:
    """`; did you mean X?` for the closest setting, spelt as this source spells it (TOML:
    the field name, even for a BOT_ variable name used as a key)."""
    wanted = field_of(key)
    match = difflib.get_close_matches(wanted, list(fields), n=1, cutoff=0.75)
    if not match:
        return ""
    variable = key.upper().startswith(ENV_PREFIX) and not toml
    return f"; did you mean {ENV_PREFIX + match[0].upper() if variable else match[0]}?"


def is_secret(info: Any) -> bool:
    extra = getattr(info, "json_schema_extra", None)
    return isinstance(extra, dict) and bool(extra.get("secret"))


_SHORT = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "string_too_short": "must not be empty",
}


def describe(exc: ValidationError, origin: Origin, fields: Fields) -> str:
    """The first problem as one line: the setting as the user wrote it, its value, why."""
    error = exc.errors(include_url=False)[0]
    location = [str(part) for part in error.get("loc", ())]
    kind = error.get("type", "")
    message = str(error.get("msg", "is not valid"))
    if kind == "extra_forbidden" and location:
        return f"{location[0]} is not a setting{did_you_mean(location[0], fields)}"
    if kind in _SHORT:
        reason = _SHORT[kind]
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        reason = "must be " + message.removeprefix("Input should be ")
    elif kind == "literal_error":
        reason = "must be " + message.removeprefix("Input should be ")
    elif kind == "value_error":
        reason = message.removeprefix("Value error, ")
    else:
        reason = message[:1].lower() + message[1:]
    if not location:  # a check across fields: {field} in its message names each one
        return re.sub(
            r"\{(\w+)\}",
            lambda m: origin.name(m[1]) if m[1] in fields else m[0],
            reason,
        )
    field = location[0]
    info = fields.get(field)
    value = error.get("input", PydanticUndefined)
    shown = SECRET if info is not None and is_secret(info) else repr(value)
    return f"{origin.label(field, shown)}: {reason}"
