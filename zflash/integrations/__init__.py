"""Bridges to other tools' engines (labgrid: ``zflash[labgrid]``); each module imports its
tool lazily from the outside, so zflash itself never needs them."""
