"""Sans-IO protocol engines, one sub-package per protocol (``zdl``, ``fastboot``).

Engines turn received bytes into events and messages into bytes to send; they never open a
port, start a thread, sleep or read a clock, so the same code runs under a real transport, an
emulator or an in-memory test pipe. Timing decisions (timeouts) stay with the caller.
"""
