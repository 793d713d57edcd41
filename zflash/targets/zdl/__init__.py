"""The ZDL back-end: the I/O driver of ``zflash.protocol.zdl``."""
