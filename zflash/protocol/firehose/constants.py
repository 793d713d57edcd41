"""Firehose limits and timings (REFERENCE-EDL 3). Timeouts are for the I/O driver."""

from __future__ import annotations

DEFAULT_PAYLOAD = 1 << 20  # MaxPayloadSizeToTargetInBytes qdl and edl start with
MAX_HOST_PAYLOAD = 16 << 20  # the host never uses a larger chunk, whatever a device offers
DEVICE_MAX_XML = 4096  # MaxXMLSizeInBytes of the emulated programmer (and edl's default)
MAX_DOCUMENT = 16384  # the largest single XML document the host buffers before refusing
QUIET_PERIOD = 0.1  # seconds of silence after a response before it counts as final (qdl)
MAX_CRC_BYTES = 1 << 20  # the longest CRC32(...) range a patch may ask the device for

# qdl's timeouts in seconds, by phase (REFERENCE-EDL 3.4).
TIMEOUTS = {
    "configure": 5.0, "raw_setup": 10.0, "data_write": 10.0, "program_final": 120.0,
    "read_chunk": 30.0, "erase": 30.0, "getsha256digest": 30.0, "patch": 5.0, "power": 5.0,
    "setbootablestoragedrive": 5.0, "xml_write": 1.0,
}

ZLP_SPELLINGS = ("ZlpAwareHost", "ZLPAwareHost")  # qdl's and edl's attribute names
