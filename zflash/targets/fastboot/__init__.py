"""The fastboot back-end: the I/O driver of ``zflash.protocol.fastboot``."""
