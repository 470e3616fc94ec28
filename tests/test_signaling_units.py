"""Call state, join URLs and settings: pure functions, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.calls import CallCollection
from bot.join_url import parse_join_url
from bot.settings import Settings, SettingsError

URL = (
    "https://teams.microsoft.com/l/meetup-join/19%3ameeting_NDA5%40thread.v2/0?context="
    "%7b%22Tid%22%3a%2272f988bf-86f1-41af-91ab-2d7cd011db47%22%2c%22Oid%22%3a%22550fae72-d251"
    "-43ec-868c-373732c2704f%22%7d"
)


def _call_item(call_id: str, state: str, change: str = "updated") -> dict[str, object]:
    return {
        "changeType": change,
        "resource": f"/app/calls/{call_id}",
        "resourceData": {"@odata.type": "#microsoft.graph.call", "state": state},
    }


async def test_out_of_order_establishing_does_not_move_a_call_back() -> None:
    registry = CallCollection()
    registry.get_or_add("c")  # a call the bot placed: notifications for others are only held
    registry.apply(_call_item("c", "established"))
    registry.apply(_call_item("c", "establishing"))
    assert registry.calls["c"].state == "established"
    assert registry.calls["c"].states_seen == ["established"]


async def test_deleted_terminates_and_keeps_result_info() -> None:
    registry = CallCollection()
    registry.get_or_add("c")  # a call the bot placed: notifications for others are only held
    item = _call_item("c", "terminated", "deleted")
    item["resourceData"] = {"state": "terminated", "resultInfo": {"code": 0, "subcode": 7015}}
    item["resourceUrl"] = "/communications/calls/c"
    registry.apply(item)
    assert registry.calls["c"].state == "terminated"
    assert registry.calls["c"].result_info == {"code": 0, "subcode": 7015, "message": ""}


async def test_roster_links_audio_msis_to_participants() -> None:
    registry = CallCollection()
    registry.get_or_add("c")  # a call the bot placed: notifications for others are only held
    registry.apply(
        {
            "changeType": "updated",
            "resourceUrl": "/communications/calls/c/participants",
            "resourceData": [
                {
                    "id": "p1",
                    "mediaStreams": [
                        {"mediaType": "audio", "sourceId": "1652"},
                        {"mediaType": "video", "sourceId": "1653"},
                    ],
                }
            ],
        }
    )
    assert registry.calls["c"].msi_to_participant() == {1652: "p1"}


@pytest.mark.parametrize(
    "item", [None, 3, {}, {"resourceUrl": "/elsewhere"}, {"resourceUrl": "/app/calls/x"}]
)
async def test_malformed_items_are_counted_not_raised(item: object) -> None:
    registry = CallCollection()
    registry.apply(item)
    assert registry.ignored == 1


def test_join_url_gives_chat_and_meeting_info() -> None:
    info = parse_join_url(URL)
    assert info.thread_id == "19:meeting_NDA5@thread.v2"
    assert info.message_id == "0"
    assert info.tenant_id == "72f988bf-86f1-41af-91ab-2d7cd011db47"
    assert info.meeting_info()["organizer"]["user"]["id"] == "550fae72-d251-43ec-868c-373732c2704f"


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/x",
        URL.split("?")[0] + "?context=notjson",
        URL.split("?")[0] + "?context=%7b%22Tid%22%3a%22%22%7d",
    ],
)
def test_bad_join_urls_say_why(url: str) -> None:
    with pytest.raises(ValueError):
        parse_join_url(url)


def test_settings_from_env_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "bot.toml"
    toml.write_text('app_id = "from-toml"\nwebhook_port = 9000\n')
    settings = Settings.load(
        {"BOT_WEBHOOK_PORT": "9441", "BOT_SERVICE_FQDN": "bot.example"}, str(toml)
    )
    assert (settings.app_id, settings.webhook_port, settings.service_fqdn) == (
        "from-toml",
        9441,
        "bot.example",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BOT_WEBHOOK_PORT": "nine"}, "BOT_WEBHOOK_PORT='nine': must be a whole number"),
        ({"BOT_WEBHOOK_PORT": "70000"}, "BOT_WEBHOOK_PORT='70000': must be less than or equal"),
        ({"BOT_GRAPH_URL": "http://graph"}, "BOT_GRAPH_URL='http://graph': must be an https"),
        ({"BOT_CERT_FILE": "/x.pem"}, "BOT_CERT_FILE='/x.pem': no such file"),
        ({"BOT_APP_ID": ""}, "BOT_APP_ID='': must not be empty"),
    ],
)
def test_wrong_settings_fail_with_a_clear_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(env)


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "bot.toml"
    toml.write_text("app_idd = 1\n")
    with pytest.raises(SettingsError, match="app_idd is not a setting; did you mean app_id"):
        Settings.load({}, str(toml))
