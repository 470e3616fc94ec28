"""Finding processors: entry points, dotted paths, options, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError
from media.frames import AudioFrame
from media.pipeline import EchoProcessor, plugins
from media.pipeline.examples import GainProcessor, ToneGenerator
from media.pipeline.plugins import ProcessorSpecError, build, load_factory, parse_options
from media.pipeline.processor import ProcessorContext

CLOSED: list[str] = []


class Mine:
    """A user's processor, found by dotted path; its constructor takes the context."""

    name = "mine"

    def __init__(self, context: ProcessorContext) -> None:
        self.level = int(context.option("level", "1"))

    def process(self, frame: AudioFrame) -> AudioFrame | None:
        return None

    def close(self) -> None:
        CLOSED.append(self.name)


def not_a_processor(context: ProcessorContext) -> object:
    return object()


def test_shipped_processors_are_entry_points() -> None:
    names = plugins.available()
    for name in ("echo", "gain", "tone", "recorder", "video-recorder", "timeline", "transcription"):
        assert name in names
    made = build(["echo", "gain", "tone"], ProcessorContext("s"), {"gain": {"gain_db": "-3"}})
    assert [type(p) for p in made] == [EchoProcessor, GainProcessor, ToneGenerator]


def test_dotted_paths_and_options_by_short_name() -> None:
    for spec in ("tests.test_plugins:Mine", "tests.test_plugins.Mine"):
        (made,) = build([spec], ProcessorContext("s"), parse_options("Mine.level=7"))
        assert isinstance(made, Mine) and made.level == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "not in the bot.processors entry points; valid names: echo, fixture-recorder, "),
        ("recoder", "entry points (did you mean 'recorder'?); valid names: echo, "),
        ("no.such.module:Thing", "cannot import no.such.module"),
        ("tests.test_plugins:Missing", "has no Missing"),
        ("tests.test_plugins:CLOSED", "is not callable"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ProcessorSpecError, match=re.escape(message)):
        load_factory(spec)


def test_an_unknown_name_is_one_line_with_every_valid_name() -> None:
    with pytest.raises(ProcessorSpecError) as info:
        load_factory("timelines")
    message = str(info.value)
    assert "\n" not in message and "did you mean 'timeline'?" in message
    assert all(name in message for name in plugins.available())
    with pytest.raises(ProcessorSpecError) as info:
        load_factory("zzzz")
    assert "did you mean" not in str(info.value)


def test_every_processor_is_described_in_one_line() -> None:
    described = plugins.describe()
    assert [name for name, _ in described] == sorted(plugins.available())
    for name, text in described:
        # The factory's own docstring says what it does: not a fallback, not an options list.
        assert text and "\n" not in text and not text.startswith(("(", "Option")), (name, text)
    assert dict(described)["echo"].startswith("Says back what it hears")


def test_print_processors_lists_one_aligned_line_each() -> None:
    import io

    out = io.StringIO()
    plugins.print_processors(out)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(plugins.available())
    starts = {line.index(text) for line, (_, text) in zip(lines, plugins.describe(), strict=True)}
    assert len(starts) == 1  # descriptions line up in one column


def test_a_factory_that_makes_no_processor_or_refuses_an_option() -> None:
    with pytest.raises(ProcessorSpecError, match="has no name"):
        build(["tests.test_plugins:not_a_processor"], ProcessorContext("s"))
    with pytest.raises(ProcessorSpecError, match="gain_db"):
        build(["gain"], ProcessorContext("s"), {"gain": {"gain_db": "loud"}})


def test_a_failing_spec_closes_what_was_already_made() -> None:
    CLOSED.clear()
    with pytest.raises(ProcessorSpecError):
        build(["tests.test_plugins:Mine", "nope"], ProcessorContext("s"))
    assert CLOSED == ["mine"]


def test_option_syntax_errors() -> None:
    assert parse_options(" a.b = 1 ;\nc.d=x") == {"a": {"b": "1"}, "c": {"d": "x"}}
    for bad in ("a=1", "a.b", ".b=1"):
        with pytest.raises(ProcessorSpecError, match="name.key=value"):
            parse_options(bad)


def test_settings_refuse_unknown_processors_at_bot_creation(tmp_path: Path) -> None:
    from bot.app import Bot

    with pytest.raises(SettingsError, match="nope"):
        Bot(Settings(processors="echo,nope"))
    with pytest.raises(SettingsError, match="BOT_VAD_MODE=.9.: must be less than or equal to 3"):
        Settings.from_mapping({"vad_mode": "9"})
    with pytest.raises(SettingsError, match="BOT_RECORD_ON_JOIN=.maybe.: must be true or false"):
        Settings.from_mapping({"record_on_join": "maybe"})
    assert Settings.from_mapping({"record_on_join": "off"}).record_on_join is False
