"""On-disk formats zflash reads and writes on a device's storage: GPT (with Qualcomm A/B slot
bits) and the AVB vbmeta header. Pure functions on bytes; callers do the I/O."""
