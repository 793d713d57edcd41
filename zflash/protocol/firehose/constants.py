"""Firehose limits and timings (REFERENCE-EDL 3). Timeouts are for the I/O driver."""

from __future__ import annotations

DEFAULT_PAYLOAD = 1 << 20  # MaxPayloadSizeToTargetInBytes qdl and edl start with
MAX_HOST_PAYLOAD = 16 << 20  # the host never uses a larger chunk, whatever a device offers
DEVICE_MAX_XML = 4096  # MaxXMLSizeInBytes of the emulated programmer (and edl's default)
MAX_DOCUMENT = 16384  # the largest single XML document the host buffers before refusing
QUIET_PERIOD = 0.1  # seconds of silence after a response before it counts as final (qdl)
MAX_CRC_BYTES = 1 << 20  # the longest CRC32(...) range a patch may ask the device for
#: the most <log> lines the host takes for one command (or before the first): a real
#: programmer sends a few dozen; a device that never stops is refused (9026), as fastboot's
#: INFO flood is (D152, D162)
MAX_LOGS = 10_000
#: seconds the host waits for late logs after a final response before settling anyway
SETTLE_LIMIT = 2.0
#: the final program ACK: 10 s plus the time the device might take to write out what it
#: buffered at 8 MiB/s, at most qdl's 120 s (D162)
PROGRAM_FINAL_BASE, PROGRAM_FINAL_RATE = 10.0, 8 << 20

# qdl's timeouts in seconds, by phase (REFERENCE-EDL 3.4); program_final is the ceiling.
TIMEOUTS = {
    "configure": 5.0, "raw_setup": 10.0, "data_write": 10.0, "program_final": 120.0,
    "read_chunk": 30.0, "erase": 30.0, "getsha256digest": 30.0, "patch": 5.0, "power": 5.0,
    "setbootablestoragedrive": 5.0, "xml_write": 1.0,
}

ZLP_SPELLINGS = ("ZlpAwareHost", "ZLPAwareHost")  # qdl's and edl's attribute names
