"""BEGIN_UPDATE by digest (zdl.md 3.2, D200-D203): a device that still holds a package head is
sent its 32-byte digest, checks the head it holds exactly as a sent one, and answers a miss
with UPDATE_READY ``need_head``, after which the host sends the head whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import UNTRUSTED_KEY
from emulator_helpers import GOOD, demo_profile
from test_noop_reflash import make_images, make_package, trust
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.runner import EmulatorRunner, LinkFaults
from zflash.emulator.storage import Storage, read_head
from zflash.emulator.zdl_server import ServerOptions
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.flash import FlashOptions, FlashSummary, flash
from zflash.package.reader import Package
from zflash.protocol.zdl import BeginUpdate, Facts, UpdateReady
from zflash.protocol.zdl.messages import decode_message
from zflash.protocol.zdl.constants import FEATURE_BEGIN_BY_DIGEST, MsgType
from zflash.targets.zdl import target as target_module
from zflash.targets.zdl.session import ZdlSession

DIGEST = 32


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hbd")
    return make_package(make_images(root / "images"), root / "build.zpk")


@pytest.fixture
def heads_sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The payload length of every BEGIN_UPDATE the host engine is asked to send."""
    sent: list[int] = []
    real = ZdlSession.request

    def request(self, message, *args, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(message, BeginUpdate):
            sent.append(len(message.head))
        return real(self, message, *args, **kwargs)

    monkeypatch.setattr(ZdlSession, "request", request)
    return sent


def head_size(package: Path) -> int:
    with Package(package) as pkg:
        return len(pkg.head.head_bytes())


def digest_of(package: Path) -> str:
    with Package(package) as pkg:
        return pkg.head.digest


def run(url: str, package: Path, **options: bool) -> FlashSummary:
    return flash(url, package, trust(), FlashOptions(**options), lambda e: None)


def runner(state: Path, **options: object) -> EmulatorRunner:
    server = ServerOptions(**options) if options else None  # type: ignore[arg-type]
    return EmulatorRunner(state, demo_profile(), server_options=server)


def flash_twice(state: Path, package: Path) -> None:
    with runner(state) as device:
        url = device.start_tcp(0)
        assert run(url, package).booted_slot == "b"
        assert run(url, package).booted_slot == "a"


def kept_heads(state: Path) -> set[str]:
    folder = state / "heads"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def assert_named_heads_held(state: Path) -> None:
    """Every build the meta names has its head kept, intact; nothing else is kept."""
    storage = Storage(state)
    named = {b["package"] for b in storage.meta.get("builds", {}).values()}
    assert kept_heads(state) == {f"{d}.bin" for d in named}
    for digest in named:
        assert read_head(storage.head_path(digest)) is not None


def test_a_reflash_of_the_build_a_slot_holds_sends_only_the_digest(
        package: Path, tmp_path: Path, heads_sent: list[int]) -> None:
    state = tmp_path / "dev"
    with runner(state) as device:
        url = device.start_tcp(0)
        run(url, package)
        assert heads_sent == [DIGEST, head_size(package)]  # a new build: a miss, then whole
    heads_sent.clear()
    with runner(state) as device:  # a fresh device process: only what is on its flash
        summary = run(device.start_tcp(0), package)
    assert heads_sent == [DIGEST] and summary.booted_slot == "a"
    assert kept_heads(state) == {f"{digest_of(package)}.bin"}
    assert_named_heads_held(state)


def test_the_first_flash_of_a_new_build_misses_then_sends_the_head(
        package: Path, tmp_path: Path, heads_sent: list[int]) -> None:
    with runner(tmp_path / "dev") as device:
        summary = run(device.start_tcp(0), package)
    assert heads_sent == [DIGEST, head_size(package)]
    assert summary.booted_slot == "b"


def test_a_resume_after_a_pulled_cable_sends_only_the_digest(
        package: Path, tmp_path: Path, heads_sent: list[int]) -> None:
    state = tmp_path / "dev"
    with EmulatorRunner(state, demo_profile(),
                        LinkFaults(drop_after_bytes=head_size(package) + 300_000)) as device:
        url = device.start_tcp(0)
        with pytest.raises(ZflashError) as cut:
            run(url, package, delta=False)
        assert cut.value.code == Code.LINK_LOST
        heads_sent.clear()
        summary = run(url, package, delta=False)  # the same device: the head in memory
    assert heads_sent == [DIGEST] and summary.resumed_blocks > 0
    # cut again, then the device restarts: the staged head.bin is all it has
    other = make_package(make_images(tmp_path / "other"), tmp_path / "other.zpk")
    with EmulatorRunner(state, demo_profile(), LinkFaults(drop_after_bytes=500_000)) as device:
        with pytest.raises(ZflashError):
            run(device.start_tcp(0), other, delta=False)
    heads_sent.clear()
    with runner(state) as device:
        summary = run(device.start_tcp(0), other, delta=False)
    assert heads_sent == [DIGEST] and summary.resumed_blocks > 0
    assert_named_heads_held(state)


@pytest.mark.parametrize("loss", ["deleted", "corrupted", "signatures-rotted"])
def test_a_device_that_lost_the_head_gets_it_whole(
        package: Path, tmp_path: Path, heads_sent: list[int], loss: str) -> None:
    state = tmp_path / "dev"
    flash_twice(state, package)
    path = Storage(state).head_path(digest_of(package))
    if loss == "deleted":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        # a byte of the block tables, or of the signatures (outside the manifest's digest)
        at = -100 if loss == "corrupted" else _signatures_offset(package) + 10
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
    heads_sent.clear()
    with runner(state) as device:
        summary = run(device.start_tcp(0), package)
    assert heads_sent == [DIGEST, head_size(package)]
    assert summary.booted_slot == "b" and not summary.fell_back
    assert_named_heads_held(state)  # kept again, intact, at set-active


def _signatures_offset(package: Path) -> int:
    with Package(package) as pkg:
        return pkg.head.header.signatures_offset


def test_a_device_without_the_feature_gets_the_full_head(
        package: Path, tmp_path: Path, heads_sent: list[int]) -> None:
    state = tmp_path / "dev"
    with runner(state, begin_by_digest=False) as device:
        url = device.start_tcp(0)
        run(url, package)
        summary = run(url, package)
    assert heads_sent == [head_size(package)] * 2 and summary.booted_slot == "a"


def test_a_host_without_the_feature_sends_the_full_head(
        package: Path, tmp_path: Path, heads_sent: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An older host does not know the feature's name: it ignores it."""
    monkeypatch.setattr(target_module, "FEATURE_BEGIN_BY_DIGEST", "something-else")
    state = tmp_path / "dev"
    flash_twice(state, package)
    with runner(state) as device:
        summary = run(device.start_tcp(0), package)
    assert set(heads_sent) == {head_size(package)} and summary.booted_slot == "b"
    assert_named_heads_held(state)  # the new device keeps heads for hosts that will ask


def _distrust(state: Path) -> None:
    """The device's trusted keys changed: only another key is trusted now."""
    key = serialization.load_pem_private_key(UNTRUSTED_KEY.read_bytes(), None)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    storage = Storage(state)
    profile = storage.profile
    profile.trusted_keys = [pem.decode()]
    (state / "profile.json").write_text(json.dumps(profile.to_json()))


def test_a_held_head_that_no_longer_verifies_is_refused_as_a_sent_one(
        package: Path, tmp_path: Path, heads_sent: list[int]) -> None:
    refusals = {}
    for by_digest in (True, False):
        state = tmp_path / f"dev-{by_digest}"
        flash_twice(state, package)
        _distrust(state)
        heads_sent.clear()
        with runner(state, begin_by_digest=by_digest) as device:
            with pytest.raises(ZflashError) as refused:
                run(device.start_tcp(0), package)
        assert heads_sent == [DIGEST if by_digest else head_size(package)]
        refusals[by_digest] = (refused.value.code, refused.value.detail)
    assert refusals[True] == refusals[False] and refusals[True][0] == Code.SIGNATURE


def test_a_held_head_is_checked_for_rollback_too(package: Path, tmp_path: Path) -> None:
    state = tmp_path / "dev"
    flash_twice(state, package)
    storage = Storage(state)
    storage.meta["rollback"]["0"] = 99
    storage.save_meta()
    device = EmulatedDevice(Storage(state))
    with pytest.raises(ZflashError) as refused:
        device.begin_update_by_digest(digest_of(package))
    assert refused.value.code == Code.ROLLBACK and device.session is None


@pytest.mark.parametrize("step", ["set-active", "commit:1"])
def test_power_loss_around_set_active_never_names_a_missing_head(
        package: Path, tmp_path: Path, heads_sent: list[int], step: str) -> None:
    state = tmp_path / "dev"
    with EmulatorRunner(state, demo_profile(), power_loss_at=step,
                        on_power_loss=lambda: None) as device:
        with pytest.raises(ZflashError):
            run(device.start_tcp(0), package)
        assert device.power_lost.wait(5)
    meta = Storage(state).meta
    assert not meta.get("builds")  # the cut came before the meta named the build
    heads_sent.clear()
    with runner(state) as device:  # rerun: the staged head.bin answers the digest
        summary = run(device.start_tcp(0), package)
    assert heads_sent == [DIGEST] and summary.booted_slot == "b"
    assert_named_heads_held(state)


def test_a_cut_in_an_unchanged_reflash_at_set_active_leaves_the_heads_consistent(
        package: Path, tmp_path: Path, heads_sent: list[int]) -> None:
    state = tmp_path / "dev"
    flash_twice(state, package)
    with EmulatorRunner(state, demo_profile(), power_loss_at="set-active",
                        on_power_loss=lambda: None) as device:
        with pytest.raises(ZflashError):
            run(device.start_tcp(0), package)
    assert_named_heads_held(state)
    heads_sent.clear()
    with runner(state) as device:
        assert run(device.start_tcp(0), package).booted_slot == "b"
    assert heads_sent == [DIGEST]


def test_heads_of_builds_no_slot_holds_are_dropped(package: Path, tmp_path: Path) -> None:
    state = tmp_path / "dev"
    builds = [package] + [make_package(make_images(tmp_path / f"i{n}"), tmp_path / f"{n}.zpk")
                          for n in range(2)]
    with runner(state) as device:
        url = device.start_tcp(0)
        for build in builds:
            run(url, build)
    assert kept_heads(state) == {f"{digest_of(b)}.bin" for b in builds[1:]}
    assert_named_heads_held(state)


def test_a_digest_the_device_never_saw_is_a_miss_and_opens_nothing(tmp_path: Path) -> None:
    state = tmp_path / "dev"
    Storage.create(state, demo_profile())
    before = sorted(p.name for p in state.rglob("*"))
    device = EmulatedDevice(Storage(state))
    assert device.begin_update_by_digest("ab" * 32) is None
    assert device.session is None and sorted(p.name for p in state.rglob("*")) == before
    # a stray file under the right name that is not that head is no hit either
    with Package(GOOD) as pkg:
        wrong = pkg.head.head_bytes()
    from zflash.emulator.storage import write_head
    storage = Storage(state)
    storage.head_path("cd" * 32).parent.mkdir()
    write_head(storage.head_path("cd" * 32), wrong)
    assert device.begin_update_by_digest("cd" * 32) is None


def test_facts_carry_the_feature_only_when_offered() -> None:
    plain = json.loads(json.dumps(DeviceFacts("p", "r", "b", "s", 1, 1, 1, 1).to_dict()))
    assert "features" not in plain  # the form of devices that predate it
    offered = DeviceFacts.from_dict({**plain,
                                     "features": [FEATURE_BEGIN_BY_DIGEST, "future-thing"]})
    assert offered.features == (FEATURE_BEGIN_BY_DIGEST, "future-thing")
    assert "features" not in offered.to_dict()  # not shown by `info`: no fact, an ability
    wire = Facts(offered).payload()
    assert decode_message(MsgType.FACTS, memoryview(wire)) == Facts(offered)
    assert b"features" not in Facts(DeviceFacts.from_dict(plain)).payload()
    with pytest.raises(ZflashError):
        DeviceFacts.from_dict({**plain, "features": "begin_by_digest"})


def test_need_head_and_the_digest_form_on_the_wire() -> None:
    miss = UpdateReady("ab" * 32, None, need_head=True)
    assert decode_message(MsgType.UPDATE_READY, memoryview(miss.payload())) == miss
    ready = UpdateReady("ab" * 32, "b")
    assert b"need_head" not in ready.payload()  # unchanged for every other answer
    assert BeginUpdate(bytes(32)).digest == bytes(32)
    assert BeginUpdate(b"ZPKG\r\n\x1a\n" + bytes(56)).digest is None


def test_a_device_that_asks_for_the_head_it_was_sent_is_a_protocol_error(
        package: Path, tmp_path: Path, heads_sent: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One fallback, never a loop: need_head is only an answer to the digest form."""
    from zflash.emulator import zdl_server

    real = zdl_server.ZdlServer._answer

    def always_missing(self, engine, request):  # type: ignore[no-untyped-def]
        if isinstance(request, BeginUpdate):
            return engine.respond(UpdateReady("ab" * 32, None, need_head=True))
        return real(self, engine, request)

    monkeypatch.setattr(zdl_server.ZdlServer, "_answer", always_missing)
    with runner(tmp_path / "dev") as device:
        with pytest.raises(ZflashError) as refused:
            run(device.start_tcp(0), package)
    assert refused.value.code == Code.PROTOCOL and heads_sent == [DIGEST, head_size(package)]
