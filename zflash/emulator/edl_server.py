"""The emulated Qualcomm EDL device: a boot ROM (Sahara), the Firehose programmer, AVB boot.

One ``EdlDevice`` per state directory (``edl.json`` + ``lun<N>.img``). ``serve(link)`` is one
session on any device-side link (the emulated USB bus, a pty as the QDLoader COM variant, a
shaped or faulty wrapper of either): HELLO v2 (max_cmd 1024; on the COM variant the driver
"swallows" it, so the device waits for the host's HELLO_RESP), command mode (serial, MSM HW
id, OEM key hash), the programmer upload checked by SHA-256 against the one the device
trusts (a wrong image is refused with IMAGE_AUTH_FAILURE, as a secure-boot PBL does), then
the Firehose ``Programmer`` over the LUN files. ``<power value="reset">`` ends the session
and boots: the active slot if its vbmeta rollback index is not below the stored one, else
(or when told to fail) the other slot; the stored index is raised only after a successful
boot (AVB). ``<power value="edl">`` ends it too, and the USB device comes back on the bus
in EDL, its boot ROM starting over (``last_power`` tells ``usb_device`` to re-plug). A host
that only closes its handle ends nothing: the programmer keeps running, silent, as on a
real device (REFERENCE-EDL 2).

Quirks (REFERENCE-EDL): ``logs_after_response`` (MSM8916's late logs) and ``pending_done``
(MSM8916's DONE_RESP "pending" for a single image).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from zflash.disk import avb
from zflash.disk.gpt import ACTIVE, SLOTS, mark_slot, slot_pairs, slot_state
from zflash.emulator.edl_disk import EdlProfile, LunFiles, create_state
from zflash.emulator.edl_power import PowerCut, PowerLoss
from zflash.emulator.link import DeviceConnection, HostDisconnected
from zflash.errors import ZflashError
from zflash.protocol.firehose import Programmer
from zflash.protocol.sahara import (NEED_DATA, PROGRAMMER_IMAGE_ID, DeviceEngine, DeviceState,
                                    Done, Execute, ExecCmd, ExecuteData, HelloResp, HwId,
                                    ImageData, Mode, Reset, ResetStateMachine, SwitchMode,
                                    encode_hw_id, encode_pk_hash, encode_serial)

HEADER_READ = 0x34  # the PBL reads the ELF header first, then 4 KiB pieces
PIECE = 4096
MAX_PROGRAMMER = 16 << 20
STATUS_INVALID_ELF_HDR = 0x14
STATUS_IMAGE_AUTH_FAILURE = 0x25
READ_SIZE = (1 << 20) + 4096
RESET_DELAY = 0.2
REENUMERATE_DELAY = 0.3  # seconds off the bus before a device reset to EDL is back


@dataclass
class EdlOptions:
    com_variant: bool = False  # the QDLoader COM port: HELLO swallowed, a byte stream
    logs_after_response: bool = False
    pending_done: bool = False
    fail_next_boot: bool = False  # the next boot of the newly active slot fails


class EdlDevice:
    """The device behind every session: its state directory and what it remembers."""

    def __init__(self, root: Path, profile: EdlProfile | None = None,
                 options: EdlOptions | None = None,
                 log: Callable[[str], None] | None = None,
                 power: PowerCut | None = None) -> None:
        self.root = Path(root)
        if not (self.root / "edl.json").exists():
            create_state(self.root, profile or EdlProfile())
        self.state = json.loads((self.root / "edl.json").read_text())
        self.profile = EdlProfile.from_json(self.state["profile"])
        self.options = options or EdlOptions()
        self.log = log or (lambda message: None)
        self.lock = threading.Lock()
        self.sessions = 0
        self.programmer_loads = 0
        self.ended = threading.Condition()
        self.sessions_ended = 0
        #: the power value the last session ended with (None: the host left, or power died)
        self.last_power: str | None = None
        #: ``--power-loss``: where the power dies (None: it never does)
        self.power = power
        self.power_lost = threading.Event()

    # -- persistent state ---------------------------------------------------------------------
    @property
    def stored_rollback(self) -> dict[int, int]:
        return {int(k): v for k, v in self.state["stored_rollback"].items()}

    @property
    def boots(self) -> list[dict[str, object]]:
        return list(self.state["boots"])

    def _save(self) -> None:
        tmp = self.root / "edl.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.root / "edl.json")

    def lun_paths(self) -> list[Path]:
        return sorted(self.root.glob("lun*.img"), key=lambda p: int(p.stem[3:]))

    # -- a session ----------------------------------------------------------------------------
    def serve(self, link: DeviceConnection) -> None:
        """One session: Sahara, then Firehose until the host resets the device or leaves."""
        with self.lock:
            self.sessions += 1
            self.last_power = None
            storage = self.open_storage()
            try:
                _Session(self, link, storage).run()
            except HostDisconnected:
                self.log("host left")
            except PowerLoss as loss:
                self.log(f"power lost at {loss}")
                self.power_lost.set()
                raise
            finally:
                storage.close()
                with self.ended:
                    self.sessions_ended += 1
                    self.ended.notify_all()

    def open_storage(self) -> LunFiles:
        """The LUN files for one session (a test's fake device may wrap them)."""
        return LunFiles(self.root, self.profile.sector_size)

    def wait_sessions(self, count: int, timeout: float = 10.0) -> bool:
        """Wait until ``count`` sessions have ended (a test waiting for the boot)."""
        with self.ended:
            return self.ended.wait_for(lambda: self.sessions_ended >= count, timeout)

    # -- booting (AVB, A/B) -------------------------------------------------------------------
    def boot(self, storage: LunFiles) -> dict[str, object]:
        """Boot the active slot, fall back to the other; raise the stored rollback index
        only after a successful boot. Recorded in ``edl.json`` ``boots``."""
        lun = next((n for n in range(storage.lun_count) if slot_state(storage.gpt(n))), None)
        if lun is None:
            record: dict[str, object] = {"booted_slot": None, "fell_back": False}
            self.state["boots"].append(record)
            self._save()
            return record
        state = slot_state(storage.gpt(lun))
        order = sorted(SLOTS, key=lambda s: (not state[s].active, -state[s].priority))
        first = order[0]
        for slot in order:
            bits = state[slot]
            if bits.unbootable or not (bits.successful or bits.tries):
                continue
            why = self._verify_slot(storage, slot)
            if slot == first and self.options.fail_next_boot:
                why = why or "forced boot failure (emulator option)"
                self.options.fail_next_boot = False
            if why:
                self.log(f"slot {slot} did not boot: {why}")
                self._mark(storage, slot, unbootable=True)
                continue
            self._mark(storage, slot, successful=True)
            index = self._vbmeta(storage, slot)
            if index is not None:
                location, value = index
                stored = self.stored_rollback
                if value > stored.get(location, 0):
                    self.state["stored_rollback"][str(location)] = value
            record = {"booted_slot": slot, "fell_back": slot != first}
            break
        else:
            record = {"booted_slot": None, "fell_back": True}
        self.state["boots"].append(record)
        self._save()
        self.log(f"booted: {record}")
        return record

    def _vbmeta(self, storage: LunFiles, slot: str) -> tuple[int, int] | None:
        for lun in range(storage.lun_count):
            part = storage.gpt(lun).get(f"vbmeta_{slot}")
            if part is not None:
                try:
                    header = avb.parse_vbmeta(storage.read(lun, part.first_lba, 1))
                except ZflashError:
                    return None
                return header.rollback_index_location, header.rollback_index
        return None

    def _verify_slot(self, storage: LunFiles, slot: str) -> str | None:
        found = self._vbmeta(storage, slot)
        if found is None:
            return "no valid vbmeta"
        location, index = found
        stored = self.stored_rollback.get(location, 0)
        if index < stored:
            return f"rollback index {index} is below the stored {stored}"
        return None

    def _mark(self, storage: LunFiles, slot: str, *, successful: bool = False,
              unbootable: bool = False) -> None:
        for lun in range(storage.lun_count):
            gpt = storage.gpt(lun)
            if slot_pairs(gpt):
                new = mark_slot(gpt, slot, successful=successful, unbootable=unbootable)
                if unbootable:  # tries spent: also clear the active bit of that slot
                    parts = []
                    for part in new.partitions:
                        if part.name.endswith(f"_{slot}"):
                            part = part.with_slot_byte(part.slot_byte & ~ACTIVE & ~0x38)
                        parts.append(part)
                    new = replace(new, partitions=tuple(parts))
                storage.write_gpt(lun, new)


class _Session:
    """One plug-in: the boot ROM, then the programmer it loaded."""

    def __init__(self, device: EdlDevice, link: DeviceConnection, storage: LunFiles) -> None:
        self.device, self.link, self.storage = device, link, storage
        self.profile = device.profile
        self.options = device.options
        self.sahara = DeviceEngine()
        self.image = bytearray()
        self.image_size = 0
        self._pending: bytes | None = None

    def _read(self) -> bytes:
        return self.link.read(READ_SIZE, None)

    def run(self) -> None:
        hello = self.sahara.hello()
        if not self.options.com_variant:
            self.link.write(hello)
        while self.sahara.state is not DeviceState.FINISHED:
            event = self.sahara.next_event()
            if event is NEED_DATA:
                self.sahara.receive_data(self._read())
                continue
            self._on_sahara(event)
        self.device.programmer_loads += 1
        self._firehose(self.sahara.take_unparsed())

    def _on_sahara(self, event: object) -> None:
        s = self.sahara
        if isinstance(event, HelloResp):
            if event.mode == Mode.COMMAND:
                self.link.write(s.cmd_ready())
            elif event.mode == Mode.IMAGE_TX_PENDING:
                self.image.clear()
                self.link.write(s.read_data(PROGRAMMER_IMAGE_ID, 0, HEADER_READ))
            else:
                self.link.write(s.end_of_image(0, 0x1B))  # memory debug not supported
        elif isinstance(event, Execute):
            reply = self._exec_reply(event.cmd)
            self.link.write(s.refuse() if reply is None else s.execute_resp(event.cmd,
                                                                            len(reply)))
            self._pending = reply
        elif isinstance(event, ExecuteData):
            self.link.write(s.execute_data(self._pending or b""))
        elif isinstance(event, SwitchMode):
            self.link.write(s.hello())
        elif isinstance(event, ImageData):
            self._image_data(bytes(event.data))
        elif isinstance(event, Done):
            self.link.write(s.done_resp(complete=not self.options.pending_done))
        elif isinstance(event, (Reset, ResetStateMachine)):
            self.link.write(s.reset_resp())
            self.link.write(s.hello())

    def _exec_reply(self, cmd: int) -> bytes | None:
        if cmd == ExecCmd.SERIAL_NUM_READ:
            return encode_serial(self.profile.serial)
        if cmd == ExecCmd.MSM_HW_ID_READ:
            return encode_hw_id(HwId.from_value(int(self.profile.hw_id, 16)))
        if cmd == ExecCmd.OEM_PK_HASH_READ:
            return encode_pk_hash(bytes.fromhex(self.profile.oem_key_hash))
        return None

    def _image_data(self, data: bytes) -> None:
        s = self.sahara
        self.image += data
        if len(self.image) == HEADER_READ:
            size = int.from_bytes(self.image[0x30:0x34], "little")
            if self.image[:4] != b"\x7fELF" or not HEADER_READ < size <= MAX_PROGRAMMER:
                self.link.write(s.end_of_image(PROGRAMMER_IMAGE_ID, STATUS_INVALID_ELF_HDR))
                return
            self.image_size = size
        if len(self.image) < self.image_size:
            length = min(PIECE, self.image_size - len(self.image))
            self.link.write(s.read_data(PROGRAMMER_IMAGE_ID, len(self.image), length))
            return
        if hashlib.sha256(self.image).hexdigest() != self.profile.programmer_sha256:
            self.device.log("programmer refused: its hash is not the trusted one")
            self.link.write(s.end_of_image(PROGRAMMER_IMAGE_ID, STATUS_IMAGE_AUTH_FAILURE))
            return
        self.link.write(s.end_of_image(PROGRAMMER_IMAGE_ID))

    def _firehose(self, early: bytes) -> None:
        programmer = Programmer(self.storage, memory_name=self.profile.memory_name,
                                logs_after_response=self.options.logs_after_response,
                                serial=self.profile.serial)
        if self.device.power is not None:
            programmer.on_step = self.device.power.observer(self.storage)
        for packet in programmer.startup():
            self.link.write(packet)
        if early:
            programmer.receive_data(early)
        while True:
            for packet in programmer.data_to_send():
                self.link.write(packet)
            request = programmer.power_request
            if request is not None:
                self.device.last_power = request
                if request == "reset":
                    self.device.boot(self.storage)
                time.sleep(RESET_DELAY)  # the ACK reaches the host before the device goes
                self.link.close()  # the device leaves EDL: off the bus / port hung up
                return
            programmer.receive_data(self._read())


def usb_device(device: EdlDevice, port_path: str = "1-4", speed: str = "high",
               wrap: Callable[[DeviceConnection], DeviceConnection] | None = None) -> object:
    """The device on the emulated USB bus as 05c6:9008, iProduct carrying ``_SN:``."""
    from zflash.emulator.usb_device import EmulatedUsbDevice
    from zflash.usb.ids import EDL_PID, QUALCOMM_VID

    def server(link: DeviceConnection) -> None:
        try:
            device.serve(wrap(link) if wrap else link)
        except PowerLoss:
            usb.unplug()  # a dead device is off the bus; ``plug()`` powers it up again
            return
        if device.last_power == "edl":  # reset to EDL: off the bus (link.close), then back
            time.sleep(REENUMERATE_DELAY)
            usb.plug()

    serial = f"{device.profile.serial:08X}"
    usb = EmulatedUsbDevice("", port_path, protocol="edl", speed=speed, vid=QUALCOMM_VID,
                            pid=EDL_PID, manufacturer="Qualcomm CDMA Technologies MSM",
                            product=f"QUSB__BULK_CID:0404_SN:{serial}", server=server)
    return usb


__all__ = ["EdlDevice", "EdlOptions", "usb_device"]
