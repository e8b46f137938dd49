"""What tests ask of a container: its address on a network, a command's output, whether a ping gets through."""

from __future__ import annotations

import ipaddress
import time
from typing import Any


def container_address(container: Any, network_name: str) -> tuple[str, str, str]:
    """(IPv4 address, MAC address, gateway) of `container` on `network_name`, as Docker reports them."""
    container.reload()
    settings = container.attrs["NetworkSettings"]["Networks"][network_name]
    return str(settings["IPAddress"]), str(settings["MacAddress"]).lower(), str(settings["Gateway"])


def exec_text(container: Any, argv: list[str]) -> tuple[int, str]:
    result = container.exec_run(argv)
    output = result.output.decode("utf-8", "replace") if isinstance(result.output, bytes) else str(result.output)
    return int(result.exit_code), output


def ping(container: Any, target: str, count: int = 1, wait: int = 1) -> tuple[bool, str]:
    code, output = exec_text(container, ["ping", "-c", str(count), "-W", str(wait), target])
    return code == 0, output


def ping_until(container: Any, target: str, timeout: float = 10.0) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    while True:
        ok, output = ping(container, target)
        if ok or time.monotonic() >= deadline:
            return ok, output
        time.sleep(0.1)


def container_pid(container: Any) -> int:
    container.reload()
    return int(container.attrs["State"]["Pid"])


def in_subnet(address: str, subnet: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
