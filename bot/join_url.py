"""Teams meeting join URLs to chatInfo + meetingInfo (the form the .NET samples parse)."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from media import safe_json

# https://teams.microsoft.com/l/meetup-join/{threadId}/{messageId}?context={"Tid":..,"Oid":..}
_JOIN = re.compile(r"^https://teams\.microsoft\.com/l/meetup-join/([^/]+)/([^/?]+)\?(.*)$")


@dataclass(frozen=True)
class JoinInfo:
    thread_id: str
    message_id: str
    tenant_id: str
    organizer_id: str

    def chat_info(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.chatInfo",
            "threadId": self.thread_id,
            "messageId": self.message_id,
        }

    def meeting_info(self) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.organizerMeetingInfo",
            "organizer": {
                "@odata.type": "#microsoft.graph.identitySet",
                "user": {
                    "@odata.type": "#microsoft.graph.identity",
                    "id": self.organizer_id,
                    "tenantId": self.tenant_id,
                },
            },
            "allowConversationWithoutHost": True,
        }


def parse_join_url(url: str) -> JoinInfo:
    """Raises ValueError naming what is wrong with the URL."""
    match = _JOIN.match(url.strip())
    if match is None:
        raise ValueError("not a Teams meetup-join URL")
    thread = urllib.parse.unquote(match.group(1))
    message = urllib.parse.unquote(match.group(2))
    query = urllib.parse.parse_qs(match.group(3))
    try:
        context = safe_json.loads(query["context"][0])  # deep nesting, huge numbers: refused
        tenant, organizer = context["Tid"], context["Oid"]
    except (KeyError, IndexError, safe_json.JsonRefused, TypeError):
        raise ValueError("join URL context must be JSON with Tid and Oid") from None
    if not all(isinstance(v, str) and v for v in (tenant, organizer)):
        raise ValueError("join URL context Tid and Oid must be non-empty strings")
    return JoinInfo(thread, message, tenant, organizer)
