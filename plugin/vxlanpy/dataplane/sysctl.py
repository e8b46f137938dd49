"""Reading and writing sysctls of the firewall's namespace: /proc/sys in the plugin's own, `sysctl` run inside
any other (tests), since /proc/sys/net shows the namespace of the process that reads it."""

from __future__ import annotations

import errno
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import DataplaneError
from .firewall_rules import command_error
from .rtnl import set_ipv4_devconf

# A sysctl key that `rtnl.set_ipv4_devconf` can set through netlink when /proc/sys is read-only.
_IPV4_DEVCONF_KEY = re.compile(r"net/ipv4/conf/(?P<dev>[A-Za-z0-9_.-]{1,15})/(?P<name>route_localnet)")


class Sysctls:
    """`run` runs a command in the namespace (`in_namespace`: another one than this process's)."""

    def __init__(self, run: Callable[[list[str]], subprocess.CompletedProcess[str]], in_namespace: bool) -> None:
        self._run = run
        self._in_namespace = in_namespace

    def read(self, key: str) -> str | None:
        if not self._in_namespace:
            try:
                return Path("/proc/sys", key).read_text().strip()
            except OSError:
                return None
        result = self._run(["sysctl", "-n", key.replace("/", ".")])
        return result.stdout.strip() if result.returncode == 0 else None

    def write(self, key: str, value: str, missing_ok: bool) -> None:
        if not self._in_namespace:
            path = Path("/proc/sys", key)
            try:
                # Already set (dockerd sets ip_forward itself): nothing to write.  Inside a managed plugin
                # /proc/sys is mounted read-only, so the write below would fail even for a no-op.
                if path.read_text().strip() == value:
                    return
                path.write_text(value)
            except FileNotFoundError:
                if not missing_ok:
                    raise DataplaneError(f"/proc/sys/{key} does not exist. Hint: is this a Linux host?") from None
            except OSError as exc:
                devconf = _IPV4_DEVCONF_KEY.fullmatch(key)
                if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and devconf is not None:
                    # A read-only /proc/sys (managed plugin): the same per-device setting through netlink.
                    set_ipv4_devconf(devconf["dev"], devconf["name"], int(value))
                    return
                raise DataplaneError(
                    f"cannot write /proc/sys/{key}: {exc.strerror}. Hint: run as root with /proc/sys writable,"
                    f" or set it on the host (sysctl -w {key.replace('/', '.')}={value})"
                ) from exc
            return
        # /proc/sys/net shows the namespace of the reading process, hence sysctl run inside it.
        result = self._run(["sysctl", "-q", "-w", f"{key}={value}"])
        if result.returncode != 0 and not (missing_ok and "No such file" in result.stderr):
            raise command_error(f"sysctl -w {key}={value}", result)
