"""The session's etcd, inside the underlay namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.etcd_server import wait_until_healthy

from .layout import ETCD_IP, ETCD_PORT
from .netns import netns_http, netns_socket
from .processes import ManagedProcess


class Etcd(ManagedProcess):
    """etcd inside the underlay namespace, listening on 10.250.0.254:2379; stop()/start() keep its data dir."""

    def __init__(self, netns: str, workdir: Path) -> None:
        super().__init__("etcd", workdir / "etcd.log")
        self.netns = netns
        self.data_dir = workdir / "etcd-data"
        self.peer_port = 0
        self.client_url = f"http://{ETCD_IP}:{ETCD_PORT}"

    def _pick_peer_port(self) -> int:
        with netns_socket(self.netns) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    def start(self, timeout: float = 30.0) -> None:
        if not self.peer_port:
            self.peer_port = self._pick_peer_port()
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            "ip", "netns", "exec", self.netns,
            "etcd",
            "--name", "vxmh",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"vxmh={peer_url}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]  # fmt: skip
        self._spawn(argv)
        wait_until_healthy("etcd", self.request, lambda: self.alive, self.log_tail, timeout, self.kill9)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 3.0) -> tuple[int, Any]:
        """An HTTP request to etcd's client URL, made from inside the underlay namespace."""
        return netns_http(self.netns, method, ETCD_IP, ETCD_PORT, path, body, timeout)

    # The v3 JSON gateway (base64 keys and values), enough for the harness's own checks.
    def put(self, key: str, value: str) -> None:
        import base64

        body = {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(value.encode()).decode()}
        status, reply = self.request("POST", "/v3/kv/put", body)
        if status != 200:
            raise RuntimeError(f"etcd put {key}: HTTP {status}: {reply!r}")

    def get_prefix(self, prefix: str) -> dict[str, str]:
        import base64

        raw = prefix.encode()
        end = raw[:-1] + bytes([raw[-1] + 1]) if raw else b"\x00"
        body = {"key": base64.b64encode(raw).decode(), "range_end": base64.b64encode(end).decode()}
        status, reply = self.request("POST", "/v3/kv/range", body)
        if status != 200 or not isinstance(reply, dict):
            raise RuntimeError(f"etcd range {prefix}: HTTP {status}: {reply!r}")
        return {
            base64.b64decode(kv["key"]).decode("utf-8", "replace"): base64.b64decode(kv.get("value", "")).decode(
                "utf-8", "replace"
            )
            for kv in reply.get("kvs", [])
        }

    def host_records(self, identity: str, prefix: str = "/vxlanpy") -> dict[str, str]:
        """What etcd holds of host `identity` that its vxlanpy does not write again when it starts (its networks'
        and endpoints' records): what `vxlanpy node rm --force` deletes, and a test gives back before starting that
        host again.  Left out: its leased records (live/, wg/peers/), its node record and addresses, which it
        writes again, and its tunnel address (wg/addresses/), which it claims again."""
        again = tuple(f"{prefix}/{part}/" for part in ("live", "nodes", "addresses", "wg"))
        return {
            key: value
            for key, value in self.get_prefix(f"{prefix}/").items()
            if (f"/{identity}/" in key or key.endswith(f"/{identity}") or value.startswith(f"{identity}/"))
            and not key.startswith(again)
        }
