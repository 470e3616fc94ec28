"""The media processor's patches on aiortc and aioice internals their public APIs lack: a
vanished MP's silent network, the ICE connection under a transceiver, host candidates on chosen
addresses only, key frames on demand, and an audio m-line without telephone-event."""

from __future__ import annotations

from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver

from emulator.mpvideo import VideoSocket
from emulator.rtpsend import TELEPHONE_EVENT


async def _send_nothing(data: bytes) -> None:
    """A vanished MP's network: every datagram is lost."""


def _ice_connection(transceiver: RTCRtpTransceiver) -> Any:
    """The aioice.Connection under a transceiver (RTCIceTransport's gatherer's, aiortc
    rtcicetransport.py; tests/test_network.py fails if the path or aioice's
    get_component_candidates signature change)."""
    return transceiver.receiver.transport.transport.iceGatherer._connection


def _restrict_host_candidates(pc: RTCPeerConnection, allowed: tuple[str, ...]) -> None:
    """Gather host candidates on the `allowed` addresses only, loopback included.

    aioice's Connection.gather_candidates binds one socket per address of get_host_addresses(),
    which leaves out 127.0.0.1 and ::1 (aioice ice.py), and aiortc has no option for it. It then
    hands the list to get_component_candidates(component, addresses), so each connection's
    method is wrapped before gathering (createOffer/setLocalDescription) to receive ours instead.
    An empty list (the relay-only policy, RFC 9429 section 3.5.3) stays empty.
    """
    connections = {id(c): c for c in (_ice_connection(t) for t in pc.getTransceivers())}
    for connection in connections.values():
        gather = connection.get_component_candidates

        async def restricted(
            component: int,
            addresses: list[str],
            timeout: int = 5,  # noqa: ASYNC109 - aioice's own signature (called with keywords)
            gather: Any = gather,
        ) -> Any:
            return await gather(component, list(allowed) if addresses else [], timeout)

        connection.get_component_candidates = restricted


def _key_frame(socket: VideoSocket) -> None:
    if socket.transceiver is not None:
        socket.transceiver.sender._send_keyframe()


def _without_telephone_event(transceiver: RTCRtpTransceiver) -> None:
    codecs = RTCRtpSender.getCapabilities("audio").codecs
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() != TELEPHONE_EVENT])
