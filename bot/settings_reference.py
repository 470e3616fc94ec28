"""docs/settings.md, generated from the Settings fields (`python -m bot settings --reference`);
tests/test_docs.py keeps the file equal to it."""

from __future__ import annotations

import math

from bot.settings import Settings
from bot.settings_sources import ENV_PREFIX, is_secret


def reference() -> str:
    """docs/settings.md: every setting, its variable, TOML key, default and meaning."""
    lines = [
        "# Settings reference",
        "",
        "Generated from `bot/settings.py` by `python -m bot settings --reference`; a test keeps",
        "it equal. Each setting is a `BOT_*` environment variable, a `BOT_*=value` line of an",
        "env file (`--env-file F` or `BOT_ENV_FILE`), or a key of the TOML file (`--config F`",
        "or `BOT_CONFIG`): the lowercase name without `BOT_`, e.g. `webhook_port = 9441`.",
        "Environment variables win over the env file, which wins over the TOML file. A wrong",
        "value stops the bot at start with one line naming the setting and the value",
        "(exit status 2).",
        "",
        "| variable | TOML key | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        default = info.default
        if default is None or default == () or default == "":
            shown = "none"
        elif is_secret(info):
            shown = "the emulator's"
        elif isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, float) and math.isfinite(default) and default.is_integer():
            shown = str(int(default))
        else:
            shown = str(default)
        description = (info.description or "").replace("|", "\\|")
        shown = shown if shown in ("none", "the emulator's") else f"`{shown}`"
        lines.append(f"| `{ENV_PREFIX}{name.upper()}` | `{name}` | {shown} | {description} |")
    return "\n".join(lines) + "\n"
