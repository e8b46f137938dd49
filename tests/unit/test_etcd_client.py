"""The etcd client's connection side: endpoint lists, failover within VXLANPY_ETCD_TIMEOUT, TLS settings.

Failover is driven with fake sessions (one per endpoint, scripted); TLS and a leader kill with real etcd
(tests/etcd_server.py, no root needed): a CA and certificates are made with openssl in the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from vxlanpy.config import Settings
from vxlanpy.errors import InvalidOption, StoreError
from vxlanpy.store.etcd import EtcdStore
from vxlanpy.store.etcd_kv import EtcdConfig, EtcdKV, LeaseNotFound

from ..etcd_server import EtcdCluster, EtcdServer, TlsFiles, make_tls

# --------------------------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize(
    ("url", "endpoints"),
    [
        ("etcd://10.0.0.1:2379", (("10.0.0.1", 2379),)),
        ("etcd://h1:2379,h2:22379,h3", (("h1", 2379), ("h2", 22379), ("h3", 2379))),
        ("etcd://h1:2379, h2:2379/", (("h1", 2379), ("h2", 2379))),
        ("etcd://[fd00::1]:2379,[fd00::2]", (("fd00::1", 2379), ("fd00::2", 2379))),
    ],
)
def test_endpoint_lists(url: str, endpoints: tuple[tuple[str, int], ...]) -> None:
    assert EtcdConfig.from_url(url).endpoints == endpoints


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("etcd://h1:2379,", r"use etcd://HOST:PORT\[,HOST:PORT...\], .* \('' is not HOST:PORT\)"),
        ("etcd://h1:2379,,h2:2379", r"\('' is not HOST:PORT\)"),
        ("etcd://fd00::1:2379", r"\('fd00::1:2379' is not"),  # the port would be ambiguous without brackets
        ("etcd://[fd00::1]x", r"\('\[fd00::1\]x' is not"),
        ("etcd://h1:0", r"\('h1:0' is not"),
        ("etcd://h1/x:2379", r"\('h1/x:2379' is not"),
        ("etcd://h1:2379,h1:2379", "lists h1:2379 twice"),
    ],
)
def test_bad_endpoint_lists_say_which_entry(url: str, phrase: str) -> None:
    with pytest.raises(InvalidOption, match=phrase):
        EtcdConfig.from_url(url)


def test_tls_turns_on_https() -> None:
    assert EtcdConfig.from_url("etcd://h:1").protocol == "http"
    assert EtcdConfig.from_url("etcd://h:1", ca_cert="/ca.pem").protocol == "https"
    kv = EtcdKV(EtcdConfig.from_url("etcd://h1:1,[fd00::2]:2", ca_cert="/ca.pem"))
    assert kv._urls == ["https://h1:1/v3", "https://[fd00::2]:2/v3"]


# --------------------------------------------------------------------------------------------- failover


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self.text = json.dumps(body) if not isinstance(body, str) else body
        self._body = body

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def iter_lines(self, chunk_size: int | None = None) -> Iterator[bytes]:
        return iter(())  # a stream that ends at once

    def json(self) -> Any:
        if isinstance(self._body, str):
            raise ValueError("not JSON")
        return self._body


Behaviour = Callable[[float], FakeResponse]  # given the request's timeout


class FakeSession(requests.Session):
    """One endpoint: answers with `behaviour`, recording every request's path and timeout."""

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.calls: list[tuple[str, Any]] = []

    def post(self, url: str | bytes, data: Any = None, json: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls.append((str(url), kwargs.get("timeout")))
        return self.behaviour(kwargs["timeout"])


def ok(timeout: float) -> FakeResponse:
    return FakeResponse(200, {"header": {"revision": "7"}, "kvs": []})


def refused(timeout: float) -> FakeResponse:
    raise requests.exceptions.ConnectionError("HTTPConnection: [Errno 111] Connection refused")


def hangs(timeout: float) -> FakeResponse:
    time.sleep(timeout)
    raise requests.exceptions.ReadTimeout("read timed out")


def no_leader(timeout: float) -> FakeResponse:
    return FakeResponse(503, {"error": "etcdserver: no leader", "code": 14})


def kv_with(*behaviours: Behaviour, timeout: float = 1.5) -> tuple[EtcdKV, list[FakeSession]]:
    sessions = [FakeSession(behaviour) for behaviour in behaviours]
    url = "etcd://" + ",".join(f"m{index}:2379" for index in range(1, len(sessions) + 1))
    return EtcdKV(EtcdConfig.from_url(url, timeout=timeout), sessions=list(sessions)), sessions


def test_a_refused_member_is_skipped_and_the_one_that_answered_is_asked_first_next_time() -> None:
    kv, (first, second, third) = kv_with(refused, ok, ok)
    assert kv.range("/p/") == ([], 7)
    assert (len(first.calls), len(second.calls), len(third.calls)) == (1, 1, 0)
    kv.range("/p/")
    assert (len(first.calls), len(second.calls), len(third.calls)) == (1, 2, 0)


def test_a_member_without_leader_is_skipped() -> None:
    kv, (first, second) = kv_with(no_leader, ok)
    assert kv.get("/p/x") is None
    assert first.calls[0][0] == "http://m1:2379/v3/kv/range"
    assert len(second.calls) == 1


def test_a_hung_member_gets_a_share_of_the_budget_and_the_next_one_answers() -> None:
    kv, (first, second) = kv_with(hangs, ok, timeout=3.0)
    started = time.monotonic()
    kv.put("/p/x", "1")
    took = time.monotonic() - started
    assert first.calls[0][1] == pytest.approx(1.0, abs=0.01)  # a third of VXLANPY_ETCD_TIMEOUT
    assert 0.95 < took < 2.0, took  # 1 s for the hung one, then an answer (margin for a loaded machine)


def test_no_member_answering_fails_within_the_timeout_with_what_happened() -> None:
    kv, sessions = kv_with(hangs, refused, no_leader, timeout=1.5)
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        kv.put("/p/x", "1")
    took = time.monotonic() - started
    assert took < 1.5 + 0.4, f"the call took {took:.2f} s, longer than VXLANPY_ETCD_TIMEOUT=1.5"
    assert all(session.calls for session in sessions), "every member was tried"
    message = str(caught.value)
    assert message.startswith("etcd at m1:2379,m2:2379,m3:2379 is unreachable: no member answered within ")
    assert "VXLANPY_ETCD_TIMEOUT=1.5 s (last: m" in message
    assert "running containers keep working" in message


def test_an_election_is_waited_out_within_the_budget() -> None:
    """Every member says "no leader" for 0.6 s, then the new leader is up: the call succeeds."""
    elected = time.monotonic() + 0.6

    def electing(timeout: float) -> FakeResponse:
        return ok(timeout) if time.monotonic() >= elected else no_leader(timeout)

    kv, sessions = kv_with(refused, electing, electing, timeout=3.0)
    assert kv.range("/p/") == ([], 7)
    assert sum(len(session.calls) for session in sessions) > 3  # several rounds
    assert time.monotonic() - elected < 1.0  # rounds 0.1 s apart; a margin for a loaded machine


def test_tls_failures_are_not_retried_and_say_what_to_check() -> None:
    def bad_ca(timeout: float) -> FakeResponse:
        raise requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    kv, (first, second) = kv_with(bad_ca, ok)
    with pytest.raises(StoreError, match="m1:2379: TLS failed .etcd's certificate is not signed by VXLANPY_ETCD_CA"):
        kv.get("/p/x")
    assert not second.calls


def test_plain_http_to_a_tls_etcd_says_to_set_the_tls_settings() -> None:
    def tls_only(timeout: float) -> FakeResponse:
        return FakeResponse(400, "Client sent an HTTP request to an HTTPS server.\n")

    kv, _ = kv_with(tls_only)
    with pytest.raises(StoreError, match="HTTPS server.*set VXLANPY_ETCD_CA, VXLANPY_ETCD_CERT and VXLANPY_ETCD_KEY"):
        kv.get("/p/x")


def test_a_forgotten_lease_is_reported_as_such() -> None:
    def forgotten(timeout: float) -> FakeResponse:
        return FakeResponse(400, {"error": "etcdserver: requested lease not found", "code": 5})

    kv, _ = kv_with(forgotten)
    with pytest.raises(LeaseNotFound):
        kv.put("/p/x", "1", lease=5)


def test_a_broken_watch_resumes_at_the_next_member() -> None:
    def broken(timeout: float) -> FakeResponse:
        raise requests.exceptions.ConnectionError("Connection refused")

    kv, (first, second) = kv_with(broken, ok)
    with pytest.raises(StoreError, match="etcd watch on m1:2379 ended"):
        list(kv.watch("/p/", 1, idle_timeout=1))
    with pytest.raises(StoreError, match="etcd at m2:2379 closed the watch stream"):
        list(kv.watch("/p/", 1, idle_timeout=1))
    assert [url for url, _ in second.calls] == ["http://m2:2379/v3/watch"]


# --------------------------------------------------------------------------------------------- TLS settings


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def settings(**env: str) -> Settings:
    return Settings.from_env({"VXLANPY_STORE": "etcd://127.0.0.1:2379", **env})


def test_good_tls_files_are_taken(tls: TlsFiles) -> None:
    taken = settings(**tls.env)
    assert (taken.etcd_ca, taken.etcd_cert, taken.etcd_key) == (
        str(tls.ca),
        str(tls.client_cert),
        str(tls.client_key),
    )


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"VXLANPY_ETCD_CA": "/nonexistent/ca.pem"}, "VXLANPY_ETCD_CA=/nonexistent/ca.pem: no such file; with the "
         "managed plugin the path is inside the plugin: put the file under /var/lib/vxlanpy"),
        ({"VXLANPY_ETCD_CA": "ca.pem"}, "VXLANPY_ETCD_CA=ca.pem is not an absolute path"),
        ({"VXLANPY_ETCD_CERT": "/"}, "VXLANPY_ETCD_CERT=/ is a directory"),
        ({"VXLANPY_ETCD_KEY": ""}, "VXLANPY_ETCD_CERT is set but VXLANPY_ETCD_KEY is not"),
        ({"VXLANPY_ETCD_CERT": ""}, "VXLANPY_ETCD_KEY is set but VXLANPY_ETCD_CERT is not"),
        ({"VXLANPY_ETCD_CA": "CLIENT_KEY"}, r"VXLANPY_ETCD_CA=\S+client.key holds no PEM certificate"),
        ({"VXLANPY_ETCD_KEY": "CA"}, r"VXLANPY_ETCD_KEY=\S+ca.pem holds no PEM private key"),
        ({"VXLANPY_ETCD_KEY": "SERVER_KEY"}, "VXLANPY_ETCD_CERT and VXLANPY_ETCD_KEY do not match"),
    ],
)  # fmt: skip
def test_bad_tls_settings_are_refused_at_start_with_the_setting_named(
    tls: TlsFiles, change: dict[str, str], phrase: str
) -> None:
    files = {"CA": str(tls.ca), "CLIENT_KEY": str(tls.client_key), "SERVER_KEY": str(tls.server_key)}
    env = {**tls.env, **{name: files.get(value, value) for name, value in change.items()}}
    with pytest.raises(InvalidOption, match=phrase):
        settings(**env)


def test_an_unreadable_tls_file_is_refused(tls: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_open = builtins.open

    def deny(path: Any, *args: Any, **kwargs: Any) -> Any:  # the tests run as root, who reads any mode
        if str(path) == str(tls.client_key):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(InvalidOption, match=r"VXLANPY_ETCD_KEY=\S+ cannot be read \(permission denied\)"):
        settings(**tls.env)


def test_tls_files_do_not_matter_to_sqlite(tls: TlsFiles) -> None:
    assert Settings.from_env({"VXLANPY_ETCD_CA": "/nonexistent"}).etcd_ca is None


# --------------------------------------------------------------------------------------------- real etcd


@pytest.fixture(scope="module")
def tls_etcd(tls: TlsFiles) -> Iterator[EtcdServer]:
    try:
        server = EtcdServer("tls", tls=tls)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    yield server
    server.destroy()


def test_tls_with_a_client_certificate_works(tls: TlsFiles, tls_etcd: EtcdServer) -> None:
    kv = EtcdKV(EtcdConfig.from_url(tls_etcd.url, timeout=3, ca_cert=str(tls.ca), cert=str(tls.client_cert),
                                    key=str(tls.client_key)))  # fmt: skip
    store = EtcdStore(kv, "tls-host")
    assert store.check() == f"etcd at {tls_etcd.client_host}:{tls_etcd.client_port} writable"


@pytest.mark.parametrize(
    ("what", "phrase"),
    [
        # The first handshake may be cut short (retried, as a dying member's is); a retry hears etcd's alert.
        (
            "no client certificate",
            "TLS failed .etcd (ended the handshake: it wants a client certificate that it|does not accept our client)",
        ),
        ("another CA", "TLS failed .etcd's certificate is not signed by VXLANPY_ETCD_CA"),
        (
            "plain http",
            r"closed the connection without answering\); .*VXLANPY_STORE \(and, if etcd serves https, VXLANPY_ETCD_CA\)",
        ),
    ],
)
def test_tls_mistakes_are_told_clearly_and_quickly(
    tls: TlsFiles, tls_etcd: EtcdServer, tmp_path: Path, what: str, phrase: str
) -> None:
    if what == "no client certificate":
        config = EtcdConfig.from_url(tls_etcd.url, timeout=3, ca_cert=str(tls.ca))
    elif what == "another CA":
        other = make_tls(tmp_path / "other")
        config = EtcdConfig.from_url(tls_etcd.url, timeout=3, ca_cert=str(other.ca), cert=str(tls.client_cert),
                                     key=str(tls.client_key))  # fmt: skip
    else:
        config = EtcdConfig.from_url(tls_etcd.url, timeout=3)
    started = time.monotonic()
    with pytest.raises(StoreError, match=phrase) as caught:
        EtcdStore(EtcdKV(config), "tls-host").check()
    took = time.monotonic() - started
    print(f"{what}: {caught.value} ({took:.2f} s)")
    # A TLS mistake is no reason to wait; a silent close, or a handshake cut short, is also how a member dies
    # (seen when the leader was killed during a handshake), so those are retried until the timeout.
    # Margins for a loaded machine: the retried ones end at the 3 s timeout, the others well before it.
    assert took < (4.0 if what in ("plain http", "no client certificate") else 2.0), took


def test_killing_the_leader_of_three_members(tls: TlsFiles) -> None:
    """Writes go on through the leader's death: none takes longer than the timeout; after the election, every
    write succeeds again; the same client watches on, from another member."""
    try:
        cluster = EtcdCluster(3, tls=tls)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cluster.start()
    try:
        timeout = 3.0
        kv = EtcdKV(EtcdConfig.from_url(cluster.url, timeout=timeout, prefix="/leader-kill", ca_cert=str(tls.ca),
                                        cert=str(tls.client_cert), key=str(tls.client_key)))  # fmt: skip
        leader = cluster.leader()
        kv._current = cluster.members.index(leader)  # the worst case: the client is talking to the leader
        seen: list[str] = []
        stop = threading.Event()

        def follow() -> None:
            revision = kv.range("/leader-kill/")[1]
            while not stop.is_set():
                try:
                    for _, item in kv.watch("/leader-kill/", revision + 1, idle_timeout=1):
                        seen.append(item.value)
                        revision = item.mod_revision
                except StoreError:  # the member died under the watch: on from `revision`, at the next one
                    time.sleep(0.2)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        outcomes: list[tuple[float, float, str]] = []
        killed_at = 0.0
        for number in range(60):
            if number == 10:
                leader.kill()
                killed_at = time.monotonic()
            started = time.monotonic()
            try:
                kv.put(f"/leader-kill/w{number:02d}", str(number))
                outcome = "ok"
            except StoreError as exc:
                outcome = str(exc)
            outcomes.append((started - killed_at if killed_at else 0.0, time.monotonic() - started, outcome))
            time.sleep(0.05)
        stop.set()
        watcher.join(5)
        failures = [o for o in outcomes if o[2] != "ok"]
        slowest = max(duration for _, duration, _ in outcomes)
        last_failure = max((at for at, _, outcome in outcomes if outcome != "ok"), default=0.0)
        print(f"\nleader {leader.name} killed: {len(outcomes)} writes, {len(failures)} failed, slowest {slowest:.2f} s, "
              f"last failure {last_failure:.2f} s after the kill, new leader {cluster.leader().name}")  # fmt: skip
        assert slowest < timeout + 0.5, outcomes  # the deadline, and a margin for a loaded machine
        assert all("is unreachable: no member answered within VXLANPY_ETCD_TIMEOUT=3 s" in o for _, _, o in failures)
        assert all(outcome == "ok" for _, _, outcome in outcomes[-20:]), "writes failed after the election"
        assert set(seen) >= {str(number) for number in range(40, 60)}, f"the watch missed writes: {sorted(seen)}"
    finally:
        cluster.destroy()


def test_a_single_endpoint_gets_the_whole_budget() -> None:
    """One member has no election to wait out: a slow answer is not cut short to try it again."""
    kv, (only,) = kv_with(ok, timeout=3.0)
    kv.get("/p/x")
    assert only.calls[0][1] == pytest.approx(3.0, abs=0.01)
