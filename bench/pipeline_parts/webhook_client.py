"""The webhook client process of bench/pipeline.py: POSTs signed commsNotifications to the
bot's webhook at a steady rate over one keep-alive HTTPS connection and times each response.

It runs in its own process (multiprocessing "spawn"), so neither its CPU nor the GIL it holds
are the bot's: what it measures is the bot process answering. Each notification is a whole
roster of one meeting in which one participant toggles mute (its rosterSequenceNumber grows),
so every post is new (no duplicate short cut) and the call's state stays bounded.

Protocol over the pipe: ("run", {...}) -> ("ok", results); ("stop",) -> ("ok", None).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import uuid
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from media.clock import MonotonicClock

CALL_ID = "b3c0ffee-0000-4000-8000-00000000bench"
PARTICIPANTS = 4
TIMEOUT_SECONDS = 10.0


def roster_body(n: int) -> bytes:
    """The n-th notification: a whole roster in which participant 0 toggles mute."""
    participants = []
    for p in range(PARTICIPANTS):
        pid = f"p-{p}"
        participants.append(
            {
                "@odata.type": "#microsoft.graph.participant",
                "id": pid,
                "info": {
                    "@odata.type": "#microsoft.graph.participantInfo",
                    "identity": {
                        "@odata.type": "#microsoft.graph.identitySet",
                        "user": {"id": f"user-{p}", "displayName": f"Speaker {p}"},
                    },
                    "endpointType": "default",
                    "participantId": pid,
                },
                "mediaStreams": [
                    {
                        "@odata.type": "#microsoft.graph.mediaStream",
                        "mediaType": "audio",
                        "label": "main-audio",
                        "sourceId": str(0x2A00 + p),
                        "direction": "sendReceive",
                        "serverMuted": False,
                    }
                ],
                "isMuted": bool(n % 2) if p == 0 else False,
                "isInLobby": False,
                "rosterSequenceNumber": n + 1 if p == 0 else 1,
            }
        )
    url = f"/communications/calls/{CALL_ID}/participants"
    body = {
        "@odata.type": "#microsoft.graph.commsNotifications",
        "value": [
            {
                "@odata.type": "#microsoft.graph.commsNotification",
                "changeType": "updated",
                "resource": url.replace("/communications/", "/app/", 1),
                "resourceUrl": url,
                "resourceData": participants,
            }
        ],
    }
    return json.dumps(body).encode()


class _Poster:
    def __init__(self, url: str, ca_file: str, token: str) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 443
        self._path = parts.path
        self._context = ssl.create_default_context(cafile=ca_file)
        self._token = token
        self._connection: http.client.HTTPSConnection | None = None
        self.connects = 0
        self.errors = 0

    def post(self, body: bytes) -> tuple[int, float]:
        """(status, seconds); status 0 if the request failed (and the connection is reset)."""
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                self._host, self._port, context=self._context, timeout=TIMEOUT_SECONDS
            )
            self._connection.connect()
            self.connects += 1
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "User-Agent": "Microsoft-Skype/3.0,(Calling/1.0)",
            "Scenario-Id": "bench-pipeline",
            "X-Microsoft-Skype-Message-ID": str(uuid.uuid4()),
        }
        started = time.perf_counter()
        try:
            self._connection.request("POST", self._path, body, headers)
            response = self._connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self.errors += 1
            self._connection.close()
            self._connection = None
            return 0, time.perf_counter() - started
        return status, time.perf_counter() - started

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def run(options: dict[str, Any]) -> dict[str, Any]:
    """`count` posts at `rate` per second after `warmup` unmeasured ones; latencies in s."""
    poster = _Poster(options["url"], options["ca_file"], options["token"])
    rate, count, warmup = float(options["rate"]), int(options["count"]), int(options["warmup"])
    first = int(options.get("first", 0))
    clock = MonotonicClock()
    never = threading.Event()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    late_sends = 0
    interval = 1.0 / rate
    try:
        for i in range(warmup):
            poster.post(roster_body(first + i))
        deadline = clock.now()
        for i in range(count):
            clock.wait_until(deadline, never)
            if clock.now() - deadline > interval:
                late_sends += 1  # the previous answer took longer than the interval
            body = roster_body(first + warmup + i)
            status, seconds = poster.post(body)
            statuses[status] += 1
            latencies.append(seconds)
            deadline += interval
            if clock.now() > deadline + interval:
                deadline = clock.now()  # do not burst to catch up
    finally:
        poster.close()
    return {
        "latencies": latencies,
        "statuses": {str(k): v for k, v in statuses.items()},
        "late_sends": late_sends,
        "connects": poster.connects,
        "errors": poster.errors,
        "next": first + warmup + count,
    }


def client_role(conn: Connection) -> None:
    conn.send(("ok", "ready"))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", run(message[1])))
        except Exception as exc:  # reported to the parent, which fails the run
            conn.send(("error", repr(exc)))
