"""`WireGuard` (encryption_base.py) for real: kernel WireGuard or wireguard-go behind one code path.

    create        kernel: a link of kind `wireguard` (pyroute2)      wireguard-go: `wireguard-go NAME` (a TUN)
    configure     `wg set NAME private-key FILE listen-port P` and `wg set NAME peer ...`: wg talks generic
                  netlink to the kernel and the UAPI socket /var/run/wireguard/NAME.sock to wireguard-go
    address, MTU, up    pyroute2, for both
    read          `wg show NAME dump`
    remove        delete the link: the kernel's goes, and wireguard-go exits (its TUN is gone) and removes its socket

The private key only ever lives in its file: `wg genkey` writes straight into it, `wg pubkey` and `wg set` read
it by path, and the one output that shows it (the first line of the dump) is dropped field by field while
parsing.  Error messages carry wg's stderr with anything shaped like a key replaced, in case.  The checks, the
dump parser and the argv of `wg set` are in wireguard_config.py.

The UAPI socket path is shared by every network namespace of one mount namespace: two namespaces (the hosts of
a test) must not use the same interface name with wireguard-go.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from ..encryption_base import (
    BACKEND_KERNEL,
    BACKEND_USERSPACE,
    NO_WIREGUARD,
    WireGuardPeer,
    WireGuardState,
)
from ..errors import DataplaneError
from ..models import IPAddress
from .linkops import Msg, dataplane_error, is_up, kind_of, netlink_errors
from .wireguard_config import (
    Dump,
    checked_interface,
    checked_key,
    checked_listen_port,
    hint,
    parse_dump,
    scrub,
    state_of,
    sync_args,
)

UAPI_DIR = Path("/var/run/wireguard")
TUN_DEVICE = Path("/dev/net/tun")
PROBE_PREFIX = "vxwgprobe"  # + 6 hex digits: 15 characters, the longest interface name
TIMEOUT = 30.0
STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_NETNS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_BOX = set("┌┐└┘│─")  # wireguard-go's banner ("not required because this kernel has WireGuard"): noise in errors


class NetlinkWireGuard:
    """The `WireGuard` protocol in one network namespace (`netns`: a name under /run/netns, for tests; None: this
    process's).  `backend` forces one (BACKEND_KERNEL, BACKEND_USERSPACE) instead of the kernel's when it has
    WireGuard, else wireguard-go.  Every public method holds the lock, so they never interleave."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        wg: str = "wg",
        wireguard_go: str = "wireguard-go",
        backend: str | None = None,
        uapi_dir: Path = UAPI_DIR,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        if backend not in (None, BACKEND_KERNEL, BACKEND_USERSPACE):
            raise ValueError(f"unknown WireGuard backend {backend!r}")
        if netns is not None and not _NETNS.fullmatch(netns):
            raise ValueError(f"unsafe network namespace name {netns!r}")
        self._netns = netns
        self._enter = [] if netns is None else ["nsenter", f"--net=/run/netns/{netns}"]
        self._wg, self._wireguard_go = wg, wireguard_go  # program names or paths
        self._forced = backend
        self._uapi_dir = uapi_dir
        self._startup_timeout = startup_timeout
        self._backend: str | None = None
        self._lock = threading.RLock()

    # -- the WireGuard protocol -------------------------------------------------------------------------

    def backend(self) -> str:
        with self._lock:
            if self._backend is None:
                self._backend = self._probe()  # a negative answer is not kept: an install fixes it
            return self._backend

    def generate_key(self, path: Path) -> str:
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
        try:
            # O_EXCL with mode 0600: the file is never readable by others, not even for a moment.
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise DataplaneError(f"cannot write a WireGuard key in {path.parent}: {error.strerror}") from error
        try:
            with os.fdopen(fd, "wb") as file:
                # wg writes the key straight into the file: it never passes through this process.
                self._tool(["genkey"], "generate a WireGuard key", stdout=file, netns=False)
                file.flush()
                os.fsync(file.fileno())
            public = self._public_key_of(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_directory(path.parent)
        return public

    def public_key(self, path: Path) -> str:
        return self._public_key_of(Path(path))

    def ensure_interface(
        self, name: str, private_key: Path, listen_port: int, address: IPAddress, prefix_len: int, mtu: int
    ) -> str:
        name = checked_interface(name)
        checked_listen_port(listen_port)
        key_file = self._key_file(private_key)
        with self._lock:
            backend = self._present_backend(name)
            if backend is None:
                backend = self.backend()
                if backend == BACKEND_KERNEL:
                    self._create_kernel_link(name)
                else:
                    self._start_wireguard_go(name)
            self._tool(["set", name, "private-key", key_file, "listen-port", str(listen_port)], f"configure {name}")
            self._configure_link(name, address, prefix_len, mtu)
            return backend

    def set_private_key(self, name: str, private_key: Path) -> None:
        name = checked_interface(name)
        key_file = self._key_file(private_key)
        with self._lock:
            self._tool(["set", name, "private-key", key_file], f"switch {name} to a new key")

    def sync_peers(self, name: str, peers: list[WireGuardPeer], keepalive: int = 25) -> None:
        name = checked_interface(name)
        with self._lock:
            args = sync_args(name, self._dump(name), peers, keepalive)
            if args is not None:
                self._tool(args, f"update the peers of {name}")

    def state(self, name: str) -> WireGuardState | None:
        name = checked_interface(name)
        with self._lock:
            backend = self._present_backend(name)
            return None if backend is None else state_of(backend, name, self._dump(name))

    def remove_interface(self, name: str) -> None:
        name = checked_interface(name)
        with self._lock:
            backend = self._present_backend(name)
            if backend is None:
                self._remove_stale_socket(name)
                return
            with self._rtnl() as ipr, netlink_errors(f"cannot delete WireGuard interface {name}"):
                try:
                    ipr.link("del", ifname=name)
                except NetlinkError as error:
                    if error.code != errno.ENODEV:
                        raise
            if backend == BACKEND_USERSPACE:
                self._wait_for_wireguard_go_to_exit(name)

    # -- the backend ------------------------------------------------------------------------------------

    def _probe(self) -> str:
        if not _installed(self._wg):
            raise DataplaneError(f"{NO_WIREGUARD}; here `{self._wg}` (wireguard-tools) is missing")
        if self._forced == BACKEND_USERSPACE or (self._forced is None and not self._kernel_has_wireguard()):
            if _installed(self._wireguard_go):
                return BACKEND_USERSPACE
            raise DataplaneError(NO_WIREGUARD)
        if self._forced == BACKEND_KERNEL and not self._kernel_has_wireguard():
            raise DataplaneError(
                "kernel WireGuard was asked for but this kernel has none: load it (modprobe wireguard) or let "
                "vxlanpy use wireguard-go"
            )
        return BACKEND_KERNEL

    def _kernel_has_wireguard(self) -> bool:
        """Whether a link of kind wireguard can be made here (the kernel loads the module on demand): a throwaway
        one is created and deleted."""
        probe = f"{PROBE_PREFIX}{os.urandom(3).hex()}"
        with self._rtnl() as ipr:
            try:
                ipr.link("add", ifname=probe, kind="wireguard")
            except NetlinkError as error:
                if error.code == errno.EOPNOTSUPP:
                    return False
                raise dataplane_error("cannot probe for kernel WireGuard", error, {}) from error
            with netlink_errors(f"cannot delete the probe interface {probe}"):
                ipr.link("del", ifname=probe)
        return True

    def _present_backend(self, name: str) -> str | None:
        """The backend of the existing interface `name`, None when there is none; a link of that name that is not
        WireGuard is refused, never taken over."""
        link = self._link(name)
        if link is None:
            return None
        kind = kind_of(link)
        if kind == "wireguard":
            return BACKEND_KERNEL
        if kind == "tun" and _listening(self._socket(name)):
            return BACKEND_USERSPACE
        what = "a TUN device with no wireguard-go behind it" if kind == "tun" else f"of kind {kind or 'unknown'}"
        raise DataplaneError(
            f"interface {name} exists and is not a WireGuard interface ({what}); remove it or set "
            "VXLANPY_WG_INTERFACE to another name"
        )

    def _create_kernel_link(self, name: str) -> None:
        remedies = {errno.EOPNOTSUPP: " (the kernel has no WireGuard); modprobe wireguard or install wireguard-go"}
        with self._rtnl() as ipr, netlink_errors(f"cannot create WireGuard interface {name}", remedies):
            ipr.link("add", ifname=name, kind="wireguard")

    def _start_wireguard_go(self, name: str) -> None:
        """`wireguard-go NAME`: it creates the TUN and the UAPI socket, then forks itself into the background and
        exits.  Its own session: a signal to the plugin's process group does not stop it (a restarted plugin
        adopts it).  Its output goes to a file, not a pipe the daemon could inherit and hold open."""
        ensure_tun_device()
        environment = {key: value for key, value in os.environ.items() if not key.startswith("WG_")}
        environment.pop("LOG_LEVEL", None)  # with it the daemon would keep writing to our stderr
        argv = [*self._enter, self._wireguard_go, name]
        with tempfile.TemporaryFile() as errors:
            try:
                result = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=errors,  # its log, errors included, goes to stdout
                    stderr=errors,
                    env=environment,
                    start_new_session=True,
                    timeout=self._startup_timeout,
                    check=False,
                )
            except FileNotFoundError as error:
                raise DataplaneError(f"{NO_WIREGUARD}; here `{error.filename}` is missing") from error
            except subprocess.TimeoutExpired as error:
                raise DataplaneError(f"wireguard-go {name} did not start within {self._startup_timeout:g} s") from error
            errors.seek(0)
            said = _without_banner(errors.read().decode(errors="replace"))
        deadline = time.monotonic() + self._startup_timeout
        while result.returncode == 0 and time.monotonic() < deadline:
            if self._link(name) is not None and _listening(self._socket(name)):
                return
            time.sleep(0.05)
        outcome = f"exit status {result.returncode}" if result.returncode else "no interface or UAPI socket appeared"
        hint = "load the tun module (modprobe tun)" if "tun" in said.lower() else "see wireguard-go's message"
        raise DataplaneError(f"cannot start wireguard-go for {name}: {outcome}: {scrub(said) or 'no message'}; {hint}")

    def _wait_for_wireguard_go_to_exit(self, name: str) -> None:
        """wireguard-go exits and removes its socket once its TUN is deleted.  Should it linger, removing the socket
        stops it too (it watches the file)."""
        socket_path = self._socket(name)
        for last_resort in (False, True):
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:
                if not socket_path.exists():
                    return
                time.sleep(0.05)
            if not last_resort:
                socket_path.unlink(missing_ok=True)
        raise DataplaneError(f"wireguard-go of {name} did not stop; find it (`pgrep -a wireguard-go`) and kill it")

    def _remove_stale_socket(self, name: str) -> None:
        """A socket left by a wireguard-go that was killed; a live one (the same name in another namespace) stays."""
        socket_path = self._socket(name)
        if socket_path.exists() and not _listening(socket_path):
            socket_path.unlink(missing_ok=True)

    def _socket(self, name: str) -> Path:
        return self._uapi_dir / f"{name}.sock"

    # -- wg ---------------------------------------------------------------------------------------------

    def _tool(self, args: list[str], action: str, *, stdout: Any = None, stdin: Any = None, netns: bool = True) -> str:
        """Run `wg ARGS` (in the namespace unless `netns` is False); its stdout, unless redirected to `stdout`."""
        argv = [*(self._enter if netns else []), self._wg, *args]
        try:
            result = subprocess.run(
                argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=TIMEOUT,
                check=False,
            )
        except FileNotFoundError as error:
            raise DataplaneError(f"cannot {action}: {NO_WIREGUARD}; here `{error.filename}` is missing") from error
        except subprocess.TimeoutExpired as error:
            raise DataplaneError(f"cannot {action}: `wg {args[0]}` did not answer within {TIMEOUT:g} s") from error
        if result.returncode != 0:
            said = " ".join(result.stderr.decode(errors="replace").split()) or f"exit status {result.returncode}"
            raise DataplaneError(f"cannot {action}: wg says: {scrub(said)}; {hint(said)}")
        return result.stdout.decode(errors="replace") if stdout is None else ""

    def _dump(self, name: str) -> Dump:
        return parse_dump(self._tool(["show", name, "dump"], f"read WireGuard interface {name}"))

    def _public_key_of(self, path: Path) -> str:
        try:
            with open(path, "rb") as key_file:  # wg reads it: the key never enters this process
                public = self._tool(["pubkey"], "derive a WireGuard public key", stdin=key_file, netns=False).strip()
        except OSError as error:
            raise DataplaneError(f"cannot read the WireGuard key {path}: {error.strerror}") from error
        return checked_key(public, f"the public key `wg pubkey` derived from {path}")

    @staticmethod
    def _key_file(path: Path) -> str:
        path = Path(path).absolute()
        if not path.is_file():
            raise DataplaneError(f"WireGuard key file {path} does not exist; restart the plugin to generate one")
        return str(path)

    # -- netlink ----------------------------------------------------------------------------------------

    @contextmanager
    def _rtnl(self) -> Iterator[Any]:
        """A pyroute2 socket for this call only: the caller's thread owns it (see NetlinkLinks on threads)."""
        where = f"network namespace {self._netns!r}" if self._netns else "the host network namespace"
        with netlink_errors(f"cannot open a netlink socket in {where}"):
            ipr = IPRoute() if self._netns is None else IPRoute(netns=self._netns, flags=0)
        try:
            yield ipr
        finally:
            ipr.close()

    def _link(self, name: str) -> Msg | None:
        with self._rtnl() as ipr:
            try:
                return ipr.link("get", ifname=name)[0]
            except NetlinkError as error:
                if error.code == errno.ENODEV:
                    return None
                raise dataplane_error(f"cannot look up interface {name}", error, {}) from error

    def _configure_link(self, name: str, address: IPAddress, prefix_len: int, mtu: int) -> None:
        """Exactly the one address (the connected route to the tunnel subnet comes with it), the MTU, up."""
        if not 0 < prefix_len <= address.max_prefixlen:
            raise DataplaneError(f"prefix length {prefix_len} does not fit {address}; fix VXLANPY_WG_SUBNET")
        with self._rtnl() as ipr, netlink_errors(f"cannot configure WireGuard interface {name}"):
            link = ipr.link("get", ifname=name)[0]
            index = int(link["index"])
            present = {
                (ipaddress.ip_address(str(entry.get("address"))), int(entry["prefixlen"]))
                for entry in ipr.get_addr(index=index)
                if entry["index"] == index and entry.get("address")
            }
            for stale, stale_len in present - {(address, prefix_len)}:
                if not stale.is_link_local:
                    ipr.addr("del", index=index, address=str(stale), prefixlen=stale_len)
            if (address, prefix_len) not in present:
                flags = IFA_F_NODAD if address.version == 6 else 0
                ipr.addr("add", index=index, address=str(address), prefixlen=prefix_len, flags=flags)
            changes: dict[str, Any] = {}
            if link.get("mtu") != mtu:
                changes["mtu"] = mtu
            if not is_up(link):
                changes["state"] = "up"
            if changes:
                ipr.link("set", index=index, **changes)


def ensure_tun_device(path: Path = TUN_DEVICE) -> None:
    """wireguard-go needs /dev/net/tun.  A minimal /dev (a container's, a VM's init) may lack the node although the
    kernel has TUN; made here (character device 10:200), opening it loads the module."""
    if path.exists():
        return
    try:
        path.parent.mkdir(mode=0o755, exist_ok=True)
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    except FileExistsError:
        pass
    except OSError as error:
        raise DataplaneError(
            f"wireguard-go needs {path}, which is missing and cannot be made ({error.strerror}); load the tun module "
            "(modprobe tun) and give the plugin the device"
        ) from error


def _installed(program: str) -> bool:
    return shutil.which(program) is not None


def _listening(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket `path` (a killed wireguard-go leaves its file)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _without_banner(text: str) -> str:
    return " ".join(" ".join(line.split()) for line in text.splitlines() if not _BOX & set(line)).strip()


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: some filesystems refuse fsync on a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
