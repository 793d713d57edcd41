"""Link counters both engines keep, so the flasher and bench/ can report link quality."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LinkStats:
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    retransmissions: int = 0     # frames sent again (host), answers sent again (device)
    timeouts: int = 0
    crc_errors: int = 0
    skipped_bytes: int = 0
    duplicates: int = 0          # seq'd frames dropped as already accepted (device)
    out_of_order: int = 0        # seq'd frames dropped for a gap (device)
    acks: int = 0                # sent (device) or received (host)
    naks: int = 0
    ignored: int = 0             # valid frames that were stale, echoed or out of session

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
