"""Tripwire: the aiortc internals media/ and emulator/ rely on (aiortc/src/aiortc/
rtcrtpreceiver.py, rtcrtpsender.py, codecs/__init__.py; aioice/src/aioice/ice.py).

pyproject pins aiortc to 1.16.*; if an upgrade changes any of these, this fails loudly, before
a call silently loses its audio.
"""

from __future__ import annotations

import inspect

import aiortc
from aiortc import rtcdtlstransport, rtcrtpreceiver
from aiortc.codecs import opus
from aiortc.rtcrtpsender import RTCRtpSender


def test_version_is_the_one_we_read() -> None:
    assert aiortc.__version__.startswith("1.16.")


def test_receiver_hook_point_is_an_instance_lookup() -> None:
    params = list(inspect.signature(rtcrtpreceiver.RTCRtpReceiver._handle_rtp_packet).parameters)
    assert params == ["self", "packet", "arrival_time_ms"]
    # The router calls it through the instance, so an instance attribute overrides it.
    source = inspect.getsource(rtcdtlstransport.RTCDtlsTransport._handle_rtp_data)
    assert "receiver._handle_rtp_packet(" in source


def test_receiver_reports_come_from_the_receivers_stream_statistics() -> None:
    """media/engine.receiver_statistics feeds this dict; aiortc's RTCP loop reads it."""
    source = inspect.getsource(rtcrtpreceiver.RTCRtpReceiver._run_rtcp)
    assert "self.__remote_streams.items()" in source
    init = inspect.getsource(rtcrtpreceiver.RTCRtpReceiver.__init__)
    assert "self.__remote_streams" in init
    assert list(inspect.signature(rtcrtpreceiver.StreamStatistics.add).parameters) == [
        "self",
        "packet",
    ]


def test_dtls_send_rtp_takes_serialized_packets() -> None:
    params = list(inspect.signature(rtcdtlstransport.RTCDtlsTransport._send_rtp).parameters)
    assert params == ["self", "data"]


def test_pre_encoded_packets_go_through_pack() -> None:
    assert "self.__encoder.pack(data)" in inspect.getsource(RTCRtpSender._next_encoded_frame)
    assert "convert_timebase(packet.pts" in inspect.getsource(opus.OpusEncoder.pack)
