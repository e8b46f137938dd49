"""The WireGuard dataplane without root: the dump parser, the argv it builds for `wg`, the key files, errors that
never show a key, and the FakeWireGuard the driver's and the mesh's tests rely on.

NetlinkWireGuard runs a stand-in `wg` here (a Python script written per test) that logs its argv and answers
`show dump` from a file, so every argv the class builds is seen; tests/kernel/test_wireguard.py runs the real one.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from vxlanpy.dataplane.fake_wireguard import FakeWireGuard
from vxlanpy.dataplane.wireguard import NetlinkWireGuard
from vxlanpy.dataplane.wireguard_config import is_key, parse_dump, scrub, state_of, sync_args
from vxlanpy.encryption_base import BACKEND_KERNEL, BACKEND_USERSPACE, NO_WIREGUARD, WireGuardPeer
from vxlanpy.errors import DataplaneError

PRIVATE = "oFjZm0jFaAqQ0pQ2yGdNsCZGsSw9tfmJvbN6h4IhkUw="
PUBLIC = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
PEER_1 = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PEER_2 = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
PEER_3 = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def peer(key: str, endpoint: str, tunnel: str, port: int = 51820) -> WireGuardPeer:
    return WireGuardPeer(key, ip(endpoint), port, ip(tunnel))


def dump_text(*peer_lines: str, private: str = PRIVATE, public: str = PUBLIC, port: int = 51820) -> str:
    return "\n".join([f"{private}\t{public}\t{port}\toff", *peer_lines]) + "\n"


def peer_line(key: str, endpoint: str, allowed: str, handshake: int = 0, keepalive: str = "25") -> str:
    return f"{key}\t(none)\t{endpoint}\t{allowed}\t{handshake}\t0\t0\t{keepalive}"


# -- the dump -----------------------------------------------------------------------------------------------


def test_the_dump_is_read_without_keeping_the_private_key() -> None:
    text = dump_text(
        peer_line(PEER_1, "10.99.0.2:51820", "10.255.0.2/32", handshake=1700000000),
        peer_line(PEER_2, "[fd00:99::3]:51821", "10.255.0.3/32", keepalive="off"),
        peer_line(PEER_3, "(none)", "(none)"),
    )
    dump = parse_dump(text)

    assert dump.public_key == PUBLIC and dump.listen_port == 51820
    assert dump.peers[PEER_1].endpoint == (ip("10.99.0.2"), 51820)
    assert dump.peers[PEER_1].allowed_ips == ("10.255.0.2/32",) and dump.peers[PEER_1].latest_handshake == 1700000000
    assert dump.peers[PEER_2].endpoint == (ip("fd00:99::3"), 51821) and dump.peers[PEER_2].keepalive == 0
    assert dump.peers[PEER_3].endpoint is None and dump.peers[PEER_3].allowed_ips == ()
    assert PRIVATE not in repr(dump)


def test_a_dump_of_an_interface_without_a_key_reads_as_no_public_key() -> None:
    dump = parse_dump("(none)\t(none)\t44637\toff\n")
    assert (dump.public_key, dump.listen_port, dump.peers) == ("", 44637, {})


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"{PRIVATE}\t{PUBLIC}\n",
        f"{PRIVATE}\t{PUBLIC}\tnot-a-port\toff\n",
        dump_text(f"{PEER_1}\t{PRIVATE}\tshort"),
        dump_text(peer_line(PEER_1, "10.99.0.2:x", "10.255.0.2/32")),
    ],
    ids=["empty", "short interface line", "bad port", "short peer line", "bad endpoint"],
)
def test_a_malformed_dump_is_refused_without_quoting_it(text: str) -> None:
    with pytest.raises(DataplaneError) as refused:
        parse_dump(text)
    assert "wg show" in str(refused.value)
    assert PRIVATE not in str(refused.value) and PEER_1 not in str(refused.value)


def test_state_shows_peers_with_their_tunnel_and_latest_handshake() -> None:
    dump = parse_dump(
        dump_text(
            peer_line(PEER_1, "[fd00:99::2]:51820", "10.255.0.2/32", handshake=1700000123),
            peer_line(PEER_2, "(none)", "10.255.0.3/32"),  # not one vxlanpy set up: no WireGuardPeer form
        )
    )
    state = state_of(BACKEND_USERSPACE, "vxlanpy-wg", dump)
    assert state.backend == BACKEND_USERSPACE and state.public_key == PUBLIC and state.listen_port == 51820
    assert state.peers == {PEER_1: peer(PEER_1, "fd00:99::2", "10.255.0.2")}
    assert state.handshakes == {PEER_1: 1700000123.0}


# -- the argv of `wg set` ----------------------------------------------------------------------------------


def test_new_peers_get_endpoint_allowed_ip_and_keepalive_ipv6_in_brackets() -> None:
    present = parse_dump(dump_text())
    args = sync_args(
        "vxlanpy-wg", present, [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_2, "fd00::3", "10.255.0.3")], 25
    )
    assert args is not None
    text = " ".join(args)
    assert f"peer {PEER_1} endpoint 10.99.0.2:51820 allowed-ips 10.255.0.2/32 persistent-keepalive 25" in text
    assert f"peer {PEER_2} endpoint [fd00::3]:51820 allowed-ips 10.255.0.3/32 persistent-keepalive 25" in text
    assert args[:2] == ["set", "vxlanpy-wg"] and PRIVATE not in args


def test_an_ipv6_tunnel_address_is_a_128_bit_allowed_ip() -> None:
    args = sync_args("wg0", parse_dump(dump_text()), [peer(PEER_1, "10.99.0.2", "fd00:255::2")], 25)
    assert args is not None and "fd00:255::2/128" in args


def test_removals_come_before_additions_so_a_rotated_key_can_take_the_tunnel_address() -> None:
    present = parse_dump(dump_text(peer_line(PEER_1, "10.99.0.2:51820", "10.255.0.2/32")))
    # The host behind PEER_1 rotated its key to PEER_2: same tunnel address.
    args = sync_args("vxlanpy-wg", present, [peer(PEER_2, "10.99.0.2", "10.255.0.2")], 25)
    assert args is not None
    assert args.index("remove") < args.index(PEER_2), args
    assert args[args.index(PEER_1) + 1] == "remove"


def test_nothing_to_do_runs_nothing_and_a_changed_peer_is_corrected() -> None:
    present = parse_dump(
        dump_text(
            peer_line(PEER_1, "10.99.0.2:51820", "10.255.0.2/32"),
            peer_line(PEER_2, "10.99.0.3:51820", "10.255.0.3/32"),
        )
    )
    same = [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_2, "10.99.0.3", "10.255.0.3")]
    assert sync_args("vxlanpy-wg", present, same, 25) is None

    moved = [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_2, "10.99.0.9", "10.255.0.3", port=4000)]
    assert sync_args("vxlanpy-wg", present, moved, 25) == ["set", "vxlanpy-wg", *moved_args(PEER_2)]
    assert sync_args("vxlanpy-wg", present, same, 10) is not None, "a changed keepalive must be applied"


def moved_args(key: str) -> list[str]:
    return ["peer", key, "endpoint", "10.99.0.9:4000", "allowed-ips", "10.255.0.3/32", "persistent-keepalive", "25"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (peer("-not-a-key", "10.99.0.2", "10.255.0.2"), "is not a WireGuard key"),
        (WireGuardPeer(PEER_1, ip("10.99.0.2"), 0, ip("10.255.0.2")), "not 1-65535"),
        (WireGuardPeer(PEER_1, "10.99.0.2 ; x", 51820, ip("10.255.0.2")), "no IP address"),  # type: ignore[arg-type]
    ],
    ids=["key", "port", "endpoint"],
)
def test_a_bad_peer_value_never_reaches_argv(bad: WireGuardPeer, message: str) -> None:
    with pytest.raises((DataplaneError, ValueError), match=message):
        sync_args("vxlanpy-wg", parse_dump(dump_text()), [bad], 25)


def test_two_peers_claiming_one_tunnel_address_are_refused_naming_both() -> None:
    twins = [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_2, "10.99.0.3", "10.255.0.2")]
    with pytest.raises(DataplaneError) as refused:
        sync_args("vxlanpy-wg", parse_dump(dump_text()), twins, 25)
    assert PEER_1 in str(refused.value) and PEER_2 in str(refused.value) and "10.255.0.2" in str(refused.value)


def test_scrub_hides_anything_shaped_like_a_key() -> None:
    assert scrub(f"wg: bad {PRIVATE} here") == "wg: bad <key> here"
    assert scrub("Unable to modify interface: No such device") == "Unable to modify interface: No such device"
    assert is_key(PUBLIC) and not is_key(PUBLIC[:-2] + "B=")  # the last character carries only 4 bits


# -- NetlinkWireGuard against a stand-in wg -----------------------------------------------------------------

STAND_IN = """#!{python}
import base64, hashlib, json, os, sys
here = {here!r}
args = sys.argv[1:]
with open(os.path.join(here, "argv.log"), "a") as log:
    log.write(json.dumps(args) + "\\n")
if os.path.exists(os.path.join(here, "stderr.txt")):
    sys.stderr.write(open(os.path.join(here, "stderr.txt")).read())
    sys.exit(1)
if args == ["genkey"]:
    print(base64.b64encode(os.urandom(32)).decode())
elif args == ["pubkey"]:
    private = sys.stdin.read().strip()
    if len(private) != 44:
        sys.stderr.write("Key is not the correct length or format\\n")
        sys.exit(1)
    print(base64.b64encode(hashlib.sha256(private.encode()).digest()).decode())
elif args[0] == "show":
    sys.stdout.write(open(os.path.join(here, "dump.txt")).read())
"""


class StandIn:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "wg"
        self.path.write_text(STAND_IN.format(python=sys.executable, here=str(directory)))
        self.path.chmod(0o755)

    def argvs(self) -> list[list[str]]:
        log = self.directory / "argv.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def dump(self, text: str) -> None:
        (self.directory / "dump.txt").write_text(text)

    def fail_with(self, stderr: str) -> None:
        (self.directory / "stderr.txt").write_text(stderr)


@pytest.fixture
def stand_in(tmp_path: Path) -> StandIn:
    directory = tmp_path / "bin"
    directory.mkdir()
    return StandIn(directory)


def test_generate_key_writes_a_0600_file_atomically_and_never_puts_the_key_in_argv(
    stand_in: StandIn, tmp_path: Path
) -> None:
    wireguard = NetlinkWireGuard(wg=str(stand_in.path))
    key_path = tmp_path / "state" / "wireguard.key"
    key_path.parent.mkdir()
    umask = os.umask(0)  # the mode is given at creation, not left to the umask
    try:
        public = wireguard.generate_key(key_path)
    finally:
        os.umask(umask)

    private = key_path.read_text().strip()
    assert is_key(private) and is_key(public) and public != private
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(path.name for path in key_path.parent.iterdir()) == ["wireguard.key"], "a temporary file was left"
    assert wireguard.public_key(key_path) == public
    assert all(private not in arg for argv in stand_in.argvs() for arg in argv)


def test_a_failed_key_generation_leaves_the_old_key_in_place(stand_in: StandIn, tmp_path: Path) -> None:
    wireguard = NetlinkWireGuard(wg=str(stand_in.path))
    key_path = tmp_path / "wireguard.key"
    wireguard.generate_key(key_path)
    old = key_path.read_bytes()
    stand_in.fail_with("wg: cannot read /dev/urandom\n")

    with pytest.raises(DataplaneError, match="cannot generate a WireGuard key"):
        wireguard.generate_key(key_path)

    assert key_path.read_bytes() == old
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bin", "wireguard.key"]


def test_sync_peers_reads_the_dump_then_sets_only_the_difference(stand_in: StandIn) -> None:
    stand_in.dump(dump_text(peer_line(PEER_1, "10.99.0.2:51820", "10.255.0.2/32")))
    wireguard = NetlinkWireGuard(wg=str(stand_in.path))

    wireguard.sync_peers("vxlanpy-wg", [peer(PEER_2, "fd00::3", "10.255.0.3")])

    assert stand_in.argvs() == [
        ["show", "vxlanpy-wg", "dump"],
        ["set", "vxlanpy-wg", "peer", PEER_1, "remove", "peer", PEER_2, "endpoint", "[fd00::3]:51820",
         "allowed-ips", "10.255.0.3/32", "persistent-keepalive", "25"],
    ]  # fmt: skip


def test_set_private_key_passes_the_file_path_only(stand_in: StandIn, tmp_path: Path) -> None:
    wireguard = NetlinkWireGuard(wg=str(stand_in.path))
    key_path = tmp_path / "wireguard.key"
    wireguard.generate_key(key_path)

    wireguard.set_private_key("vxlanpy-wg", key_path)

    assert stand_in.argvs()[-1] == ["set", "vxlanpy-wg", "private-key", str(key_path)]
    with pytest.raises(DataplaneError, match="does not exist"):
        wireguard.set_private_key("vxlanpy-wg", tmp_path / "missing.key")


def test_a_wg_failure_says_what_to_do_and_never_shows_a_key(stand_in: StandIn, tmp_path: Path) -> None:
    wireguard = NetlinkWireGuard(wg=str(stand_in.path))
    stand_in.fail_with(f"Unable to modify interface: No such device\nline {PRIVATE}\n")

    with pytest.raises(DataplaneError) as refused:
        wireguard.sync_peers("vxlanpy-wg", [])

    message = str(refused.value)
    assert "No such device" in message and "restart the plugin" in message, message
    assert PRIVATE not in message and "<key>" in message


def test_without_wg_backend_and_every_call_fail_with_what_to_install(tmp_path: Path) -> None:
    wireguard = NetlinkWireGuard(wg=str(tmp_path / "no-wg"), backend=BACKEND_USERSPACE)
    with pytest.raises(DataplaneError) as refused:
        wireguard.backend()
    assert NO_WIREGUARD in str(refused.value) and "no-wg" in str(refused.value)
    with pytest.raises(DataplaneError, match="apt-get install wireguard-tools"):
        wireguard.generate_key(tmp_path / "wireguard.key")
    assert not (tmp_path / "wireguard.key").exists() and list(tmp_path.iterdir()) == []


def test_userspace_without_wireguard_go_is_no_wireguard(stand_in: StandIn, tmp_path: Path) -> None:
    wireguard = NetlinkWireGuard(wg=str(stand_in.path), wireguard_go=str(tmp_path / "none"), backend=BACKEND_USERSPACE)
    with pytest.raises(DataplaneError) as refused:
        wireguard.backend()
    assert str(refused.value) == NO_WIREGUARD


@pytest.mark.parametrize("name", ["", "-rf", "a" * 16, "wg 0", "wg/0", ".."])
def test_an_unsafe_interface_name_is_refused_before_anything_runs(stand_in: StandIn, name: str) -> None:
    wireguard = NetlinkWireGuard(wg=str(stand_in.path))
    with pytest.raises(DataplaneError, match="VXLANPY_WG_INTERFACE"):
        wireguard.sync_peers(name, [])
    assert stand_in.argvs() == []


# -- FakeWireGuard -------------------------------------------------------------------------------------------


def test_fake_without_a_backend_refuses_with_what_to_install(tmp_path: Path) -> None:
    fake = FakeWireGuard(available_backend=None)
    key = tmp_path / "wireguard.key"
    fake.generate_key(key)
    with pytest.raises(DataplaneError) as refused:
        fake.backend()
    assert str(refused.value) == NO_WIREGUARD
    with pytest.raises(DataplaneError, match="wireguard-go"):
        fake.ensure_interface("vxlanpy-wg", key, 51820, ip("10.255.0.1"), 16, 1370)
    assert fake.interfaces == {}
    fake.available_backend = BACKEND_KERNEL
    assert fake.ensure_interface("vxlanpy-wg", key, 51820, ip("10.255.0.1"), 16, 1370) == BACKEND_KERNEL


def test_fake_keys_are_files_0600_and_nothing_it_returns_holds_the_private_key(tmp_path: Path) -> None:
    fake = FakeWireGuard()
    key = tmp_path / "wireguard.key"
    public = fake.generate_key(key)
    private = key.read_text().strip()
    assert len(base64.b64decode(private)) == 32 and is_key(public) and public != private
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and list(tmp_path.iterdir()) == [key]
    assert fake.public_key(key) == public

    fake.ensure_interface("vxlanpy-wg", key, 51820, ip("10.255.0.1"), 16, 1370)
    fake.sync_peers("vxlanpy-wg", [peer(PEER_1, "10.99.0.2", "10.255.0.2")])
    state = fake.state("vxlanpy-wg")
    assert state is not None and state.public_key == public
    everything = repr((state, fake.interfaces, fake.calls))
    assert private not in everything


def test_fake_interface_is_idempotent_and_corrected_and_peers_are_exact(tmp_path: Path) -> None:
    fake = FakeWireGuard()
    key = tmp_path / "wireguard.key"
    fake.generate_key(key)
    assert fake.state("vxlanpy-wg") is None
    assert fake.ensure_interface("vxlanpy-wg", key, 51820, ip("10.255.0.1"), 16, 1370) == BACKEND_USERSPACE
    fake.available_backend = BACKEND_KERNEL  # an existing interface keeps its backend, as the real one adopts it
    assert fake.ensure_interface("vxlanpy-wg", key, 51821, ip("10.255.0.1"), 16, 1360) == BACKEND_USERSPACE
    interface = fake.interfaces["vxlanpy-wg"]
    assert (interface.listen_port, interface.mtu, interface.up) == (51821, 1360, True)

    fake.sync_peers("vxlanpy-wg", [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_2, "10.99.0.3", "10.255.0.3")])
    fake.handshake("vxlanpy-wg", PEER_1, 1700000000.0)
    fake.sync_peers("vxlanpy-wg", [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_3, "10.99.0.3", "10.255.0.3")])
    state = fake.state("vxlanpy-wg")
    assert state is not None and sorted(state.peers) == sorted([PEER_1, PEER_3])
    assert state.handshakes == {PEER_1: 1700000000.0, PEER_3: 0.0}, "an unchanged peer keeps its handshake"
    assert interface.keepalive == 25

    fake.remove_interface("vxlanpy-wg")
    fake.remove_interface("vxlanpy-wg")
    assert fake.state("vxlanpy-wg") is None


def test_fake_rotation_changes_the_public_key_and_checks_like_the_real_one(tmp_path: Path) -> None:
    fake = FakeWireGuard()
    key, new_key = tmp_path / "wireguard.key", tmp_path / "new.key"
    old_public = fake.generate_key(key)
    fake.ensure_interface("vxlanpy-wg", key, 51820, ip("10.255.0.1"), 16, 1370)
    new_public = fake.generate_key(new_key)

    fake.set_private_key("vxlanpy-wg", new_key)

    state = fake.state("vxlanpy-wg")
    assert state is not None and state.public_key == new_public != old_public
    with pytest.raises(DataplaneError, match="No such device"):
        fake.sync_peers("other-wg", [])
    with pytest.raises(DataplaneError, match="both claim tunnel address"):
        fake.sync_peers(
            "vxlanpy-wg", [peer(PEER_1, "10.99.0.2", "10.255.0.2"), peer(PEER_2, "10.99.0.3", "10.255.0.2")]
        )
    with pytest.raises(DataplaneError, match="does not exist|holds no WireGuard key|cannot read"):
        fake.set_private_key("vxlanpy-wg", tmp_path / "missing.key")


def test_fake_failures_can_be_injected_per_method(tmp_path: Path) -> None:
    fake = FakeWireGuard()
    fake.fail["sync_peers"] = DataplaneError("boom")
    key = tmp_path / "wireguard.key"
    fake.generate_key(key)
    fake.ensure_interface("vxlanpy-wg", key, 51820, ip("10.255.0.1"), 16, 1370)
    with pytest.raises(DataplaneError, match="boom"):
        fake.sync_peers("vxlanpy-wg", [])
    assert ("sync_peers", "vxlanpy-wg") in fake.calls


FAILING_WIREGUARD_GO = """#!{python}
import sys
print("ERROR: (" + sys.argv[1] + ") Failed to create TUN device: no such file or directory")
print("stray {key}")
sys.exit(1)
"""


def test_a_failed_wireguard_go_start_says_what_it_said_without_keys(stand_in: StandIn, tmp_path: Path) -> None:
    daemon = tmp_path / "wireguard-go"
    daemon.write_text(FAILING_WIREGUARD_GO.format(python=sys.executable, key=PRIVATE))
    daemon.chmod(0o755)
    wireguard = NetlinkWireGuard(wg=str(stand_in.path), wireguard_go=str(daemon), backend=BACKEND_USERSPACE)
    key = tmp_path / "wireguard.key"
    wireguard.generate_key(key)

    with pytest.raises(DataplaneError) as refused:
        wireguard.ensure_interface("vxwgunit0", key, 51820, ip("10.255.0.1"), 16, 1370)

    message = str(refused.value)
    assert "cannot start wireguard-go for vxwgunit0: exit status 1" in message, message
    assert "Failed to create TUN device" in message and "modprobe tun" in message, message
    assert PRIVATE not in message
