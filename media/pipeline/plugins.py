"""Finding processors: the `bot.processors` entry-point group and dotted paths.

A spec names a processor factory (a callable taking a ProcessorContext and returning a
processor; a processor class whose constructor takes the context works as is):

- an entry-point name in the `bot.processors` group, e.g. `recorder` (this package's own are
  declared in pyproject.toml; another package adds its own the same way, no fork needed);
- a dotted path, `package.module:attribute` or `package.module.attribute`.

Settings list specs as `BOT_PROCESSORS="recorder,timeline,mypkg.vad:Loudness"` and give them
options as `BOT_PROCESSOR_OPTIONS="recorder.rotate_mb=100;gain.gain_db=-3"`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import TextIO

from media.pipeline.processor import (
    AudioProcessor,
    Processor,
    ProcessorContext,
    ProcessorFactory,
    VideoProcessor,
    close_processors,
)

ENTRY_POINT_GROUP = "bot.processors"


class ProcessorSpecError(ValueError):
    """A processor spec or its options cannot be used; the message says which and why."""


def available() -> dict[str, str]:
    """Entry-point names in the group and what they point at."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def unknown_message(spec: str) -> str:
    """One line for a name that is no entry point: the closest name ("did you mean"), every
    valid name, and the dotted-path alternative."""
    names = sorted(available())
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = ", ".join(names) or "none installed"
    return (
        f"processor {spec!r} is not in the {ENTRY_POINT_GROUP} entry points{hint}; "
        f"valid names: {valid}; or a dotted path, package.module:attribute"
    )


def describe() -> list[tuple[str, str]]:
    """(name, one-line description) for every processor BOT_PROCESSORS accepts by name (the
    `bot.processors` entry points), by name. The description is the first line of the factory's
    docstring, else of what it makes (its return annotation, or the class itself); a plug-in
    that cannot be loaded says so instead of failing the listing."""
    described = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            target = ep.load()
        except Exception as exc:  # a broken plug-in package: list it, say why
            described.append((ep.name, f"(cannot be loaded: {exc!r})"))
            continue
        described.append((ep.name, _first_line(target) or f"(no description: {ep.value})"))
    return described


def print_processors(out: TextIO | None = None) -> None:
    """The `python -m bot processors` listing: one line per name with its description."""
    rows = describe()
    width = max((len(name) for name, _ in rows), default=0)
    for name, text in rows:
        print(f"{name:{width}s}  {text}", file=out or sys.stdout)


def _first_line(target: object) -> str:
    candidates = [target]
    if not inspect.isclass(target):
        try:
            made = inspect.signature(target, eval_str=True).return_annotation  # type: ignore[arg-type]
        except (TypeError, ValueError, NameError):
            made = inspect.Signature.empty
        if inspect.isclass(made):
            candidates.append(made)
    for candidate in candidates:
        doc = inspect.getdoc(candidate)
        if doc and doc.strip():
            return doc.strip().splitlines()[0].strip()
    return ""


def import_path(path: str) -> object:
    """`package.module:attribute` or `package.module.attribute` to the object it names.
    Raises ValueError saying what is missing (callers say which setting it came from)."""
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError("expected package.module:attribute")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name} has no {attribute}") from None
    return target


def load_factory(spec: str) -> ProcessorFactory:
    """The factory a spec names. Raises ProcessorSpecError naming the spec."""
    spec = spec.strip()
    if not spec:
        raise ProcessorSpecError("empty processor spec")
    if ":" in spec or "." in spec:
        try:
            target = import_path(spec)
        except ValueError as exc:
            raise ProcessorSpecError(f"processor {spec!r}: {exc}") from exc
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not matches:
            raise ProcessorSpecError(unknown_message(spec))
        try:
            target = matches[0].load()
        except Exception as exc:  # a broken plug-in package: say which
            raise ProcessorSpecError(f"processor {spec!r}: loading it failed: {exc!r}") from exc
    if not callable(target):
        raise ProcessorSpecError(f"processor {spec!r} is not callable")
    factory: Callable[[ProcessorContext], object] = target
    return factory  # type: ignore[return-value]


def parse_options(text: str) -> dict[str, dict[str, str]]:
    """`name.key=value;name.key=value` to {name: {key: value}}. Raises ProcessorSpecError."""
    options: dict[str, dict[str, str]] = {}
    for item in text.replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not sep or not dot or not name or not option:
            raise ProcessorSpecError(f"processor option {item!r}: expected name.key=value")
        options.setdefault(name, {})[option.strip()] = value.strip()
    return options


def parse_specs(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def build(
    specs: Iterable[str],
    context: ProcessorContext,
    options: Mapping[str, Mapping[str, str]] | None = None,
) -> list[Processor]:
    """Make one session's processors. Options are looked up by the spec as written (and by
    its last dotted part, so `mypkg.mod:Thing` takes `Thing.key=value`)."""
    made: list[Processor] = []
    try:
        for spec in specs:
            made.append(_make(spec, context, options))
    except BaseException:
        close_processors(made)  # a later spec failed: release what the earlier ones hold
        raise
    return made


def _make(
    spec: str, context: ProcessorContext, options: Mapping[str, Mapping[str, str]] | None
) -> Processor:
    factory = load_factory(spec)
    short = spec.replace(":", ".").rsplit(".", 1)[-1]
    own = dict((options or {}).get(short, {}))
    own.update((options or {}).get(spec, {}))
    try:
        processor = factory(_with_options(context, own))
    except ValueError as exc:
        raise ProcessorSpecError(f"processor {spec!r}: {exc}") from exc
    if not isinstance(processor, AudioProcessor | VideoProcessor):
        raise ProcessorSpecError(
            f"processor {spec!r} made {processor!r}, which has no name and "
            "process(frame) or process_video(frame)"
        )
    return processor


def _with_options(context: ProcessorContext, options: Mapping[str, str]) -> ProcessorContext:
    if not options:
        return context
    return ProcessorContext(
        session_id=context.session_id,
        call_id=context.call_id,
        out_dir=context.out_dir,
        options={**context.options, **options},
        names=context.names,
        emit=context.emit,
    )
