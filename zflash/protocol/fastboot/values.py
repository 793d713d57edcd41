"""Lenient readers for the values real bootloaders put in getvar answers.

Devices differ: sizes in decimal or ``0x`` hex, slots as ``a`` or ``_a``, yes/no or 1/0,
stray spaces everywhere, ``getvar all`` lines as ``name: value`` or ``name:value``. Each
reader accepts all of these and returns one normal form, so the rest of zflash never sees the
variation.
"""

from __future__ import annotations

from zflash.errors import Code, ZflashError

_STRIP = "\x00\r\n\t "


def parse_size(text: str, what: str = "size") -> int:
    """Decimal or ``0x`` hex, spaces ignored; anything else is the device's PROTOCOL error."""
    value = text.strip(_STRIP).replace(" ", "")
    try:
        if value[:2] in ("0x", "0X"):
            number = int(value[2:], 16)
        elif value.isdigit():
            number = int(value, 10)
        else:
            raise ValueError
    except ValueError:
        raise ZflashError(Code.PROTOCOL, f"device reported {what} as {text[:40]!r}, "
                                         f"which is not a number") from None
    return number


def format_size(size: int) -> str:
    """How zflash's emulator reports sizes: ``0x`` hex, which every client parses."""
    return f"0x{size:x}"


def parse_slot(text: str) -> str | None:
    """``a``, ``_a``, `` A `` -> ``a``; empty -> None."""
    value = text.strip(_STRIP).lstrip("_").lower()
    return value or None


def parse_bool(text: str) -> bool | None:
    """yes/no, true/false, 1/0 (any case); None when it is none of these."""
    value = text.strip(_STRIP).lower()
    if value in ("yes", "true", "1", "y"):
        return True
    if value in ("no", "false", "0", "n"):
        return False
    return None


def parse_var_line(line: str) -> tuple[str, str] | None:
    """One ``getvar all`` INFO line -> (name, value); None if it is not a variable line.

    ``name: value`` splits at the first ``": "`` (names never hold one, values may);
    ``name:value`` splits at the last ``:``, because names such as ``has-slot:boot`` do.
    """
    text = line.strip(_STRIP)
    name, sep, value = text.partition(": ")
    if not sep:
        name, sep, value = text.rpartition(":")
    if not sep or not name.strip():
        return None
    return name.strip(), value.strip(_STRIP)
