"""Limits and fixed strings of the fastboot protocol (AOSP fastboot README, constants.h)."""

from __future__ import annotations

MAX_COMMAND = 4096  # modern bootloaders; nothing longer is ever sent
SHORT_COMMAND = 64  # what old bootloaders (LK, U-Boot) accept; zflash stays below when it can
MAX_RESPONSE = 256  # a response packet is at most this long, prefix included
PREFIX_SIZE = 4
MAX_MESSAGE = MAX_RESPONSE - PREFIX_SIZE  # text after OKAY/FAIL/INFO/TEXT
MAX_DATA_SIZE = 0xFFFFFFFF  # download:%08x cannot name more
RESPONSE_TIMEOUT = 30.0  # seconds; every INFO or TEXT restarts it

OKAY = b"OKAY"
FAIL = b"FAIL"
DATA = b"DATA"
INFO = b"INFO"
TEXT = b"TEXT"

DEFAULT_TCP_PORT = 5554
TCP_VERSION = 1  # "FB01"
TCP_HANDSHAKE_SIZE = 4
TCP_HEADER_SIZE = 8  # big-endian u64 message length
TCP_HANDSHAKE_TIMEOUT = 2.0
