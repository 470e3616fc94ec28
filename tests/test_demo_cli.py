"""`python -m bot demo` as a user runs it: every scenario `--list` names plays as a subprocess,
exits 0, and its summary shows the outcome the scenario file's [expect] promises, checked here
against the summary's own record of each call (not only the demo's verdict); an outcome that
does not hold exits 1 naming it; an unknown processor exits 2 before anything starts.

Each run binds port 0 everywhere (emulator, webhook, media), so three play at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emulator.scenario import SCENARIOS_DIR, load, names
from media.pipeline import plugins

ROOT = Path(__file__).resolve().parent.parent
AT_ONCE = 3
RUN_TIMEOUT = 120.0
SHORT_SECONDS = 2.0
# Scenarios whose [expect] needs their whole timeline (Gina leaves the stand-up at 5.2 s; the
# policy-recording group joins up to 1.2 s in): they keep their own `seconds`.
OWN_SECONDS = {"standup", "policy-recording"}
STALE = ("recordings/stale-session/mixed-0001.wav", "recordings/stale-session/timeline.png")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    out: Path
    summary: dict[str, Any] | None


def _env(**extra: str) -> dict[str, str]:
    """This environment without BOT_* settings (a developer's or CI's must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    return env | extra


def _demo(args: list[str], out: Path, env: dict[str, str] | None = None) -> Ran:
    summary_path = out / "summary.json"
    done = subprocess.run(
        [sys.executable, "-m", "bot", "demo", *args, "--out", str(out)]
        + ["--json", str(summary_path)],
        cwd=ROOT,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return Ran(done.returncode, done.stdout, done.stderr, out, summary)


def _play(name: str, base: Path) -> Ran:
    out = base / name
    for stale in STALE:  # an earlier run's files, which the summary must not name
        (out / stale).parent.mkdir(parents=True, exist_ok=True)
        (out / stale).write_bytes(b"old")
    seconds = [] if name in OWN_SECONDS else ["--seconds", str(SHORT_SECONDS)]
    return _demo(["--scenario", name, *seconds], out)


def _unmet(base: Path) -> Ran:
    """incoming-p2p, expecting a second call that never comes."""
    text = (SCENARIOS_DIR / "incoming-p2p.toml").read_text()
    path = base / "unmet.toml"
    path.write_text(text.replace("[expect]\n", "[expect]\ncalls = 2\n"))
    return _demo(["--scenario", str(path), "--seconds", "1"], base / "unmet")


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every listed scenario, and one whose [expect] cannot hold, AT_ONCE at a time."""
    listed = subprocess.run(
        [sys.executable, "-m", "bot", "demo", "--list"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    shown = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert shown == names()
    base = tmp_path_factory.mktemp("demo")
    with ThreadPoolExecutor(AT_ONCE) as pool:
        runs = {name: pool.submit(_play, name, base) for name in shown}
        unmet = pool.submit(_unmet, base)
        results = {name: future.result() for name, future in runs.items()}
        results[" unmet"] = unmet.result()
    return results


@pytest.mark.parametrize("name", names())
def test_scenario_plays_as_its_file_expects(ran: dict[str, Ran], name: str) -> None:
    run = ran[name]
    assert run.returncode == 0, run.stderr[-3000:]
    assert "not as expected" not in run.stderr
    summary = run.summary
    assert summary is not None and summary["ok"] and summary["failed"] == []
    assert summary["processors"] == ["echo", "recorder", "timeline"]  # the demo's default
    scenario = load(name)
    expect, bot = scenario.expect, scenario.bot
    calls = summary["calls"]
    assert calls
    final = expect.get("final_state", "terminated")
    assert all(c["states"][-1] == final for c in calls), [c["states"] for c in calls]
    first = calls[0]
    if "calls" in expect:
        assert len(calls) == expect["calls"]
    if "states" in expect:
        assert first["states"] == expect["states"]
    if "result_subcode" in expect:
        assert first["result_info"]["subcode"] == expect["result_subcode"]
    if "first_call_roster" in expect:
        people = {s.display_name for m in scenario.meetings for s in m.participants}
        people |= {s.display_name for c in scenario.incoming for s in (c.caller, *c.group)}
        assert set(first["roster"]) & people == set(expect["first_call_roster"])
    if "roster_max" in expect:
        assert set(expect["roster_max"]) <= set(first["roster"])
    if bot.get("action") == "redirect":
        assert all(c["redirected_to"] == [bot["redirect_to"]] for c in calls)
        assert all(c["states"] == ["incoming", "terminated"] for c in calls)
    if bot.get("action") == "transfer":
        assert first["transfer_targets"] == bot["transfer_to"]
        assert first["states"].count("transferring") == len(bot["transfer_to"])
    # This run's files only: each listed recording exists, none is an earlier run's.
    listed = [*summary["recordings"], summary["timeline_png"] or ""]
    assert not any("stale-session" in p for p in listed)
    for recording in summary["recordings"]:
        assert (run.out / recording).is_file()
    if any(c["recorded"] for c in calls):  # Graph acknowledged `recording`: audio was kept
        assert any(r.endswith(".wav") for r in summary["recordings"])
    if any("established" in c["states"] for c in calls):  # media flowed: a timeline was drawn
        assert summary["timeline_png"] and Path(summary["timeline_png"]).is_file()


def test_an_expectation_that_does_not_hold_exits_1_naming_it(ran: dict[str, Ran]) -> None:
    run = ran[" unmet"]
    assert run.returncode == 1, run.stderr[-3000:]
    lines = [line for line in run.stderr.splitlines() if "not as expected" in line]
    assert len(lines) == 1 and "[expect] calls: 1 calls, expected 2" in lines[0], run.stderr
    assert run.summary is not None and not run.summary["ok"]


@pytest.mark.parametrize(
    ("processors", "unknown", "close"),
    [("nosuch", "nosuch", None), ("echo,recoder", "recoder", "recorder")],
)
def test_an_unknown_processor_exits_2_with_one_line_naming_the_valid_ones(
    tmp_path: Path, processors: str, unknown: str, close: str | None
) -> None:
    out = tmp_path / "out"
    run = _demo([], out, env=_env(BOT_PROCESSORS=processors))
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("bot: ") and f"{unknown!r}" in lines[0]
    assert ("did you mean" in lines[0]) == (close is not None)
    if close is not None:
        assert f"did you mean {close!r}?" in lines[0]
    assert all(name in lines[0] for name in plugins.available())
    assert not out.exists()  # nothing started: no certificates, no emulator, no files
