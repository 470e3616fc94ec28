"""The import boundaries between the packages hold (docs/architecture.md, "Import boundaries").

Every module is parsed with `ast`, never imported, so an import inside a function or under
`TYPE_CHECKING` counts as much as one at the top:

- `media/` imports nothing from `bot/` or `emulator/`;
- `emulator/` imports nothing from `bot/` or `media/` (it is an independent implementation of
  the other side, so that a shape error in `bot/` is caught, not mirrored);
- `bot/call.py` and `bot/participants.py` do not import each other, directly or through other
  `bot/` modules (a participant reaches its call through `bot.participants.ParticipantCall`);
- `bot/` imports from `media/` only the modules in BOT_MEDIA_IMPORTS, the current boundary.
"""

from __future__ import annotations

import ast
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Package -> the packages it must never import.
FORBIDDEN = {"media": ("bot", "emulator"), "emulator": ("bot", "media")}

# The media modules bot/ imports today, sorted: the boundary docs/architecture.md names. A new
# one widens the boundary; one no longer imported must leave the list, so that it stays exact.
BOT_MEDIA_IMPORTS = (
    "media",
    "media.clock",
    "media.control",
    "media.events",
    "media.frames",
    "media.listener",
    "media.pipeline.events",
    "media.pipeline.fixture_format",
    "media.pipeline.plugins",
    "media.pipeline.processor",
    "media.pipeline.replay",
    "media.pipeline.vad",
    "media.platform",
    "media.safe_json",
    "media.session",
    "media.video",
)


@dataclass(frozen=True)
class Import:
    path: Path  # relative to the root it was found under
    line: int
    module: str  # absolute: the module a `from` imports from, or the one `import` names

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: Path) -> str:
    """`media/pipeline/replay.py` -> `media.pipeline.replay`; a package's `__init__.py` -> it."""
    parts = path.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def parse(source: str, filename: str) -> ast.Module:
    """ast.parse with the cyclic collector off. CPython 3.11.7 keeps the AST constructor's
    recursion-depth count in per-interpreter state (https://github.com/python/cpython/issues/106905
    and its follow-ups, fixed in 3.11.8), so a parse run while another is being built, from a
    finalizer the collector calls mid-construction, fails the outer one with "AST constructor
    recursion depth mismatch": seen here when this file ran after tests that leave garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, filename)
    finally:
        if enabled:
            gc.enable()


def imports(root: Path, path: Path) -> Iterator[Import]:
    """Every import in one module, anywhere in it. `from package import name` counts as an
    import of `package.name` when that is a module (it loads the module, as
    https://docs.python.org/3/reference/simple_stmts.html#the-import-statement says), and of
    `package` otherwise; relative imports are made absolute. Constant-string calls of
    importlib.import_module and __import__ count too."""
    relative = path.relative_to(root)
    tree = parse(path.read_text(encoding="utf-8"), str(relative))
    package = module_name(relative).split(".")
    if relative.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(relative, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}" if source else alias.name
                yield Import(relative, node.lineno, full if is_module(root, full) else source)
        elif isinstance(node, ast.Call) and node.args:
            func, first = node.func, node.args[0]
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield Import(relative, node.lineno, first.value)


def package_imports(root: Path, package: str) -> Iterator[Import]:
    for path in sorted((root / package).rglob("*.py")):
        yield from imports(root, path)


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def crossings(root: Path) -> list[str]:
    """`file:line imports X` for every import FORBIDDEN names."""
    found = []
    for package, banned in FORBIDDEN.items():
        for imp in package_imports(root, package):
            hit = next((b for b in banned if in_package(imp.module, b)), None)
            if hit:
                found.append(
                    f"{imp.where()} imports {imp.module}: {package}/ never imports {hit}/ "
                    "(docs/architecture.md, Import boundaries)"
                )
    return found


def bot_graph(root: Path) -> dict[str, dict[str, Import]]:
    """bot module -> the bot modules it imports (each with its first import)."""
    graph: dict[str, dict[str, Import]] = {}
    for path in sorted((root / "bot").rglob("*.py")):
        edges = graph.setdefault(module_name(path.relative_to(root)), {})
        for imp in imports(root, path):
            if in_package(imp.module, "bot"):
                edges.setdefault(imp.module, imp)
    return graph


def import_chain(graph: dict[str, dict[str, Import]], start: str, goal: str) -> list[Import]:
    """The shortest chain of imports from module `start` to `goal`, or [] when there is none."""
    previous: dict[str, tuple[str, Import] | None] = {start: None}
    queue = [start]
    for module in queue:
        for target, imp in graph.get(module, {}).items():
            if target in previous:
                continue
            previous[target] = (module, imp)
            if target == goal:
                chain = []
                step = previous[goal]
                while step is not None:
                    chain.append(step[1])
                    step = previous[step[0]]
                return chain[::-1]
            queue.append(target)
    return []


def mutual_imports(root: Path, first: str, second: str) -> list[str]:
    """Both chains when `first` and `second` reach each other through imports, else []."""
    graph = bot_graph(root)
    there, back = import_chain(graph, first, second), import_chain(graph, second, first)
    if not (there and back):
        return []
    return [
        " -> ".join(f"{imp.where()} imports {imp.module}" for imp in chain)
        for chain in (there, back)
    ]


def bot_media_imports(root: Path) -> dict[str, Import]:
    """Each media module bot/ imports, with its first import."""
    found: dict[str, Import] = {}
    for imp in package_imports(root, "bot"):
        if in_package(imp.module, "media"):
            found.setdefault(imp.module, imp)
    return found


# -- the repository -------------------------------------------------------------------------------


def test_media_and_the_emulator_import_across_no_boundary() -> None:
    found = crossings(ROOT)
    assert not found, "\n".join(found)


def test_a_call_and_its_participants_do_not_import_each_other() -> None:
    chains = mutual_imports(ROOT, "bot.call", "bot.participants")
    assert not chains, "bot/call.py and bot/participants.py import each other:\n" + "\n".join(
        chains
    )


def test_bot_imports_only_the_listed_media_modules() -> None:
    found = bot_media_imports(ROOT)
    new = [
        f"{imp.where()} imports {m}"
        for m, imp in sorted(found.items())
        if m not in BOT_MEDIA_IMPORTS
    ]
    assert not new, (
        "bot/ imports a media module outside the boundary docs/architecture.md names "
        "(Import boundaries): go through a module already listed, or widen the boundary on "
        "purpose in that page and in BOT_MEDIA_IMPORTS:\n" + "\n".join(new)
    )
    gone = sorted(set(BOT_MEDIA_IMPORTS) - set(found))
    assert not gone, (
        f"bot/ no longer imports {', '.join(gone)}: the boundary shrank; remove them from "
        "BOT_MEDIA_IMPORTS and from docs/architecture.md (Import boundaries)"
    )
    assert list(BOT_MEDIA_IMPORTS) == sorted(BOT_MEDIA_IMPORTS)


def test_the_documented_boundary_is_the_tested_one() -> None:
    text = (ROOT / "docs/architecture.md").read_text(encoding="utf-8")
    section = text.split("## Import boundaries", 1)[1].split("\n## ", 1)[0]
    named = {m for m in BOT_MEDIA_IMPORTS if f"`{m}`" in section}
    assert named == set(BOT_MEDIA_IMPORTS), sorted(set(BOT_MEDIA_IMPORTS) - named)


# -- the checks themselves, on a small tree of bad modules ----------------------------------------


def write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in ("bot", "media", "media/pipeline", "emulator"):
        write(tmp_path, f"{package}/__init__.py", "")
    write(tmp_path, "media/clock.py", "")
    write(tmp_path, "media/session.py", "")
    write(tmp_path, "bot/app.py", "from media import clock\nfrom media.session import X\n")
    return tmp_path


def test_every_kind_of_import_across_a_boundary_is_named_with_its_line(tree: Path) -> None:
    write(
        tree,
        "media/pipeline/bad.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from bot.app import Bot\n"  # line 3
        "def f():\n"
        "    import emulator.server\n"  # line 5
        "    from .. import clock\n"  # line 6: relative, media.clock: allowed
        "import importlib\n"
        "importlib.import_module('bot.demo')\n",  # line 8
    )
    write(tree, "emulator/bad.py", "import json\nfrom media.clock import FakeClock\n")
    found = crossings(tree)
    assert all("(docs/architecture.md, Import boundaries)" in line for line in found)
    assert sorted(line.split(":", 2)[0] + ":" + line.split(":", 2)[1] for line in found) == [
        "emulator/bad.py:2 imports media.clock",
        "media/pipeline/bad.py:3 imports bot.app",
        "media/pipeline/bad.py:5 imports emulator.server",
        "media/pipeline/bad.py:8 imports bot.demo",
    ]


def test_a_cycle_through_a_third_module_is_found(tree: Path) -> None:
    write(tree, "bot/call.py", "from bot.participants import Participant\n")
    write(tree, "bot/participants.py", "from . import resources\n")
    write(tree, "bot/resources.py", "def f():\n    from bot.call import Call\n")
    chains = mutual_imports(tree, "bot.call", "bot.participants")
    assert chains == [
        "bot/call.py:1 imports bot.participants",
        "bot/participants.py:1 imports bot.resources -> bot/resources.py:2 imports bot.call",
    ]
    write(tree, "bot/resources.py", "")
    assert mutual_imports(tree, "bot.call", "bot.participants") == []


def test_a_new_media_module_in_bot_is_found(tree: Path) -> None:
    assert sorted(bot_media_imports(tree)) == ["media.clock", "media.session"]
    write(tree, "bot/new.py", "\n\nfrom media import MediaPlatform\n")  # the package itself
    assert bot_media_imports(tree)["media"].where() == "bot/new.py:3"
