"""The Qualcomm EDL back-end: the I/O driver of ``zflash.protocol.sahara`` and
``zflash.protocol.firehose``."""
