"""zflash: a host-side flashing tool for devices in download mode."""

__version__ = "0.1.0"
