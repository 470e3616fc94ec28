"""commsOperations the bot started, and their outcomes (https://learn.microsoft.com/en-us/graph/api/resources/commsoperation).

"If the action's response says completed/failed, no notification follows. If it says
notStarted/running/null, the final state arrives as an operation notification."
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.errors import GraphError
from bot.resources import ResultInfo, canonical_id, result_info

FINAL = ("completed", "failed")


class OperationFailedError(GraphError):
    """A commsOperation ended `failed`; carries its resultInfo."""

    def __init__(self, operation: Operation) -> None:
        info = operation.result or ResultInfo()
        super().__init__(
            info.code,
            str(info.subcode),
            f"{operation.kind} {operation.id} failed: {info.message}",
            operation.resource,
        )
        self.operation = operation


class Operation:
    """One operation: status as Graph last reported it; await `wait()` for the outcome."""

    def __init__(self, resource: dict[str, Any]) -> None:
        self.id = canonical_id(resource.get("id", ""))
        self.kind = str(resource.get("@odata.type", "#microsoft.graph.commsOperation")).rsplit(
            ".", 1
        )[-1]
        self.client_context = resource.get("clientContext")
        self.resource: dict[str, Any] = {}
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.update(resource)

    @property
    def status(self) -> str | None:
        status = self.resource.get("status")
        return status if isinstance(status, str) else None

    @property
    def result_info(self) -> dict[str, Any] | None:
        info = self.resource.get("resultInfo")
        return info if isinstance(info, dict) else None

    @property
    def result(self) -> ResultInfo | None:
        """resultInfo with int code and subcode, whatever form Graph sent."""
        return result_info(self.resource.get("resultInfo"))

    def _text(self, key: str) -> str | None:
        value = self.resource.get(key)
        return value if isinstance(value, str) and value else None

    @property
    def recording_location(self) -> str | None:
        """recordOperation: where the recording is, fetched with `recording_access_token`
        (https://learn.microsoft.com/en-us/graph/api/resources/recordoperation)."""
        return self._text("recordingLocation")

    @property
    def recording_access_token(self) -> str | None:
        return self._text("recordingAccessToken")

    @property
    def completion_reason(self) -> str | None:
        """recordOperation and sendDtmfTonesOperation: why it completed."""
        return self._text("completionReason")

    @property
    def done(self) -> bool:
        return self._done.done()

    def update(self, resource: dict[str, Any]) -> None:
        """Merge what Graph said. Once final, an operation stays final: the POST's own response
        ("running") can arrive after the notification that completed it."""
        if self.status in FINAL and resource.get("status") not in FINAL:
            return
        self.resource = {**self.resource, **{k: v for k, v in resource.items() if v is not None}}
        if self.status in FINAL and not self._done.done():
            self._done.set_result(None)

    def finish_without_notification(self) -> None:
        """For operations Graph completes synchronously without a status (e.g. 202 actions)."""
        if not self._done.done():
            self._done.set_result(None)

    async def wait(self, within_seconds: float = 60.0) -> Operation:
        """The operation once it is final. Raises OperationFailedError, TimeoutError."""
        async with asyncio.timeout(within_seconds):
            await asyncio.shield(self._done)
        if self.status == "failed":
            raise OperationFailedError(self)
        return self

    def __repr__(self) -> str:
        return f"Operation({self.kind} {self.id} {self.status})"
