"""The docs are true to the code, and stay true.

- Every `*.md` file a comment, docstring or document names is a file a reader of this repository
  has (a path in it, relative to the repository root or to the naming file), or is part of an https
  URL. Notes that never shipped are not a source: comments cite the public page instead.
- Every ```python block in README.md and docs/*.md runs, as its own program, against a real
  emulator. A block that needs a real tenant to do anything is not shown as ```python.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from bot.devcerts import DevCerts
from emulator import Emulator
from tests.cli import clean_env, settings_env
from tests.conftest import emulator_config, settings_for

ROOT = Path(__file__).resolve().parent.parent

# A file name ending in .md: a word character right before the dot, not followed by more name.
_MD_NAME = re.compile(r"[\w./-]*\w\.md(?![\w-])")
_URL = re.compile(r"https://[^\s)\]>`'\"]+")
_CODE_SUFFIXES = {".py", ".js", ".html", ".toml", ".sh"}
_DOCUMENTS = {"README.md", "CHANGELOG.md"}


def tracked_files() -> list[str]:
    """Paths git tracks, relative to the repository root."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    return [name for name in out.decode().split("\0") if name]


def is_citing_file(path: str) -> bool:
    """Files whose comments (or, for documents, any text) may name other files."""
    name = Path(path)
    if path == "tests/test_docs.py":
        return False  # its strings are the checker's own test inputs and path pieces
    if path.startswith("fixtures/") or path in _DOCUMENTS:
        return True
    if name.parent == Path("docs") and name.suffix == ".md":
        return True
    return name.suffix in _CODE_SUFFIXES or name.name == "Makefile"


def _python_commentary(text: str) -> list[tuple[int, str]]:
    """Comments and string literals (docstrings among them) of Python source, with line numbers."""
    pieces: list[tuple[int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            pieces.append((token.start[0], token.string))
        elif sys.version_info >= (3, 12) and token.type == tokenize.FSTRING_MIDDLE:
            pieces.append((token.start[0], token.string))
    return pieces


def commentary(path: str, text: str) -> list[tuple[int, str]]:
    """(line number, text) pieces of `path` where a citation may appear."""
    if path.endswith(".py"):
        return _python_commentary(text)
    return [(number, line) for number, line in enumerate(text.splitlines(), 1)]


def md_names(piece: str) -> list[str]:
    """The `*.md` names in a piece of text that are not inside an https URL."""
    urls = [match.span() for match in _URL.finditer(piece)]
    names = []
    for match in _MD_NAME.finditer(piece):
        if not any(start <= match.start() < end for start, end in urls):
            names.append(match.group())
    return names


def resolves(name: str, citing: str, tracked: set[str]) -> bool:
    """Whether `name`, as written in the file `citing`, is a path in the repository."""
    relative_to_file = os.path.normpath(os.path.join(os.path.dirname(citing), name))
    return os.path.normpath(name) in tracked or relative_to_file in tracked


def unresolved_md_citations() -> list[str]:
    """ "path:line: name" for every `*.md` name that is neither in the repository nor a URL."""
    files = tracked_files()
    tracked = set(files)
    problems = []
    for path in filter(is_citing_file, files):
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary fixtures (frames.npz), or deleted in the working tree
        for number, piece in commentary(path, text):
            line = number
            for offset, part in enumerate(piece.splitlines() or [piece]):
                for name in md_names(part):
                    if not resolves(name, path, tracked):
                        problems.append(f"{path}:{line + offset}: {name}")
    return problems


def test_md_citations_exist() -> None:
    """Every .md file the code and docs name is one the reader has, or is a public URL."""
    problems = unresolved_md_citations()
    assert not problems, "named .md files nobody has:\n" + "\n".join(problems)


def test_md_citation_check_catches_what_it_should() -> None:
    """The check itself: a missing name fails, a repository path, a relative path and a URL pass."""
    tracked = {"docs/signaling.md", "README.md"}
    missing = "notes-" + "nobody-has.md"
    assert md_names(f"# see {missing} 2.1") == [missing]
    assert md_names("see https://learn.microsoft.com/en-us/graph/api/call-answer.md ok") == []
    assert resolves("docs/signaling.md", "bot/call.py", tracked)
    assert resolves("signaling.md", "docs/architecture.md", tracked)
    assert resolves("../README.md", "docs/architecture.md", tracked)
    assert not resolves("signaling.md", "bot/call.py", tracked)
    assert not resolves(missing, "README.md", tracked)
    assert _python_commentary(f"x = 1  # {missing}\n'''{missing}'''\n") == [
        (1, f"# {missing}"),
        (2, f"'''{missing}'''"),
    ]


# -- the ```python blocks of README.md and docs/*.md run -----------------------------------------

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
BLOCK_TIMEOUT_SECONDS = 90.0


def documents() -> list[str]:
    """README.md and docs/*.md, as tracked."""
    return [p for p in tracked_files() if p == "README.md" or re.fullmatch(r"docs/[^/]+\.md", p)]


def python_blocks(path: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python block in a document, dedented."""
    text = (ROOT / path).read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match.group("lang") != "python":
            continue
        indent = match.group("indent")
        body = "".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in match.group("body").splitlines(keepends=True)
        )
        blocks.append((text.count("\n", 0, match.start()) + 1, body))
    return blocks


def _block_ids() -> list[tuple[str, int]]:
    return [(path, line) for path in documents() for line, _ in python_blocks(path)]


def block_environment(emu: Emulator, certs: DevCerts, out_dir: Path) -> dict[str, str]:
    """What a documented program needs to reach the test's emulator, as the docs say to pass it:
    BOT_* settings, and TEAMS_JOIN_URL for the meeting to join."""
    env = clean_env(settings_env(settings_for(emu, certs)))
    env.update(
        BOT_RECORDINGS_DIR=str(out_dir / "recordings"),
        TEAMS_JOIN_URL=emu.join_url(emu.config.meetings[0]),
        PYTHONPATH=str(ROOT),
    )
    return env


def test_documents_have_python_blocks() -> None:
    """The collection below is not silently empty (a fence regex gone wrong would pass it)."""
    assert ("README.md", python_blocks("README.md")[0][0]) in _block_ids()
    assert any(path == "docs/signaling.md" for path, _ in _block_ids())


@pytest.mark.parametrize(("path", "line"), _block_ids(), ids=lambda v: str(v))
async def test_python_block_runs(path: str, line: int, certs: DevCerts, tmp_path: Path) -> None:
    """Each ```python block is a whole program: it runs in its own interpreter, from the
    repository root, against a real emulator, and exits 0 within the timeout.

    Blocks that only a real tenant could run (a real Teams meeting, real credentials) are not
    fenced as ```python: the settings reference and shell sessions are ```sh or ```text."""
    source = dict(python_blocks(path))[line]
    program = tmp_path / "block.py"
    program.write_text(source)
    emu = Emulator(emulator_config(certs))
    await emu.start()
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(program),
            cwd=ROOT,  # documented paths are relative to the repository
            env=block_environment(emu, certs, tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(child.communicate(), BLOCK_TIMEOUT_SECONDS)
        except TimeoutError:
            child.kill()
            output, _ = await child.communicate()
            pytest.fail(f"{path}:{line} ran over {BLOCK_TIMEOUT_SECONDS} s:\n{output.decode()}")
    finally:
        await emu.stop()
    assert child.returncode == 0, f"{path}:{line} exited {child.returncode}:\n{output.decode()}"


def test_settings_reference_is_generated_from_the_settings() -> None:
    """docs/settings.md is `python -m bot settings --reference`: regenerate it when a setting
    changes (`.venv/bin/python -m bot settings --reference > docs/settings.md`)."""
    from bot.settings_reference import reference

    assert (ROOT / "docs" / "settings.md").read_text() == reference()


def test_every_setting_is_in_the_reference_and_every_row_is_a_setting() -> None:
    from bot.settings import Settings

    text = (ROOT / "docs" / "settings.md").read_text()
    rows = re.findall(r"^\| `BOT_([A-Z0-9_]+)` \| `([a-z0-9_]+)` \|", text, re.MULTILINE)
    assert [(variable.lower(), key) for variable, key in rows] == [
        (name, name) for name in Settings.model_fields
    ]
