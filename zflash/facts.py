"""What a device in download mode reports about itself (DESIGN.md, "The device model").

One plain data model shared by the checks, the protocol engines, the emulator and the flasher,
so that every layer speaks of the device in the same words. ``from_dict`` validates untrusted
input (it arrives from a device over the wire) and raises only coded errors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from zflash.errors import Code, ZflashError


@dataclass(frozen=True)
class PartitionInfo:
    name: str
    size: int
    slotted: bool


@dataclass(frozen=True)
class SlotInfo:
    """A/B slot state as the bootloader keeps it (REFERENCE.md, A/B slots)."""

    name: str
    active: bool
    bootable: bool
    successful: bool
    tries_left: int
    priority: int = 0
    #: the firmware version and package digest (SHA-256 of the signed head) the device
    #: committed into this slot; None when it does not know or does not say
    version: str | None = None
    package: str | None = None


@dataclass(frozen=True)
class DeviceFacts:
    product: str
    hardware_revision: str
    baseband: str
    serial: str
    protocol_version: int
    flash_size: int
    cache_size: int
    cache_free: int
    partitions: tuple[PartitionInfo, ...] = ()
    slots: tuple[SlotInfo, ...] = ()
    current_slot: str | None = None
    rollback_indexes: dict[int, int] = field(default_factory=dict)
    #: optional protocol abilities the device offers (ZDL: "begin_by_digest"); a receiver
    #: ignores names it does not know, and an older device simply sends none
    features: tuple[str, ...] = ()

    def partition(self, name: str) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.name == name), None)

    def slot(self, name: str) -> SlotInfo | None:
        return next((s for s in self.slots if s.name == name), None)

    @property
    def inactive_slot(self) -> str | None:
        """The slot a flash writes into: any slot other than the running one."""
        others = [s.name for s in self.slots if s.name != self.current_slot]
        return others[0] if others else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for slot in data["slots"]:  # absent, not null, when unknown: older peers' form
            for key in ("version", "package"):
                if slot[key] is None:
                    del slot[key]
        data["rollback_indexes"] = {str(k): v for k, v in self.rollback_indexes.items()}
        # a protocol's business (ZDL puts it in FACTS), not a fact shown to the user: `info`
        # and the device event read alike over every protocol
        del data["features"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "DeviceFacts":
        """Build from untrusted JSON-like data; malformed input is a protocol error."""
        try:
            if not isinstance(data, dict):
                raise TypeError("facts must be an object")
            parts = tuple(PartitionInfo(name=_str(p["name"]), size=_int(p["size"]),
                                        slotted=_bool(p["slotted"]))
                          for p in _list(data.get("partitions", [])))
            slots = tuple(SlotInfo(name=_str(s["name"]), active=_bool(s["active"]),
                                   bootable=_bool(s["bootable"]),
                                   successful=_bool(s["successful"]),
                                   tries_left=_int(s["tries_left"]),
                                   priority=_int(s.get("priority", 0)),
                                   version=_opt(_str, s.get("version")),
                                   package=_opt(_digest, s.get("package")))
                          for s in _list(data.get("slots", [])))
            rollback = {_int(int(k)): _int(v)
                        for k, v in dict(data.get("rollback_indexes", {})).items()}
            current = data.get("current_slot")
            return cls(product=_str(data["product"]),
                       hardware_revision=_str(data["hardware_revision"]),
                       baseband=_str(data["baseband"]), serial=_str(data["serial"]),
                       protocol_version=_int(data["protocol_version"]),
                       flash_size=_int(data["flash_size"]), cache_size=_int(data["cache_size"]),
                       cache_free=_int(data["cache_free"]), partitions=parts, slots=slots,
                       current_slot=None if current is None else _str(current),
                       rollback_indexes=rollback,
                       features=_features(data.get("features", [])))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ZflashError(Code.PROTOCOL, f"device sent malformed facts: {exc}") from None


def _str(value: Any) -> str:
    """At most 256 printable characters: facts are printed, so no terminal control codes."""
    if not isinstance(value, str) or len(value) > 256:
        raise TypeError(f"expected a short string, got {type(value).__name__}")
    if not value.isprintable():
        raise ValueError(f"string {value[:40]!r} holds control characters")
    return value


def _opt(check: Callable[[Any], str], value: Any) -> str | None:
    return None if value is None else check(value)


def _digest(value: Any) -> str:
    """A package digest: 64 lowercase hex digits."""
    if not isinstance(value, str) or len(value) != 64 or \
            any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"package digest {str(value)[:70]!r} is not 64 hex digits")
    return value


def _features(value: Any) -> tuple[str, ...]:
    """Feature names: at most 64 short strings (unknown ones are kept, and ignored)."""
    items = _list(value)
    if len(items) > 64:
        raise ValueError("more than 64 features")
    return tuple(_str(item) for item in items)


def _int(value: Any) -> int:
    """Within 0..2**63-1, the range every other zflash integer (manifests, ZDL) uses."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise TypeError(f"expected an unsigned integer, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {value!r}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list) or len(value) > 1024:
        raise TypeError("expected a list")
    return value
