"""Property-based bad input for every call of both protocols (hypothesis, seeded and bounded).

Whatever the body, the plugin answers JSON: 200, or a 4xx/5xx carrying only `Err` (`Error` for IPAM) with a
message; never an internal error (which would mean an unhandled exception), never a half-made object: the store,
the fake kernel and the fake firewall always agree afterwards.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vxlanpy.app import create_app
from vxlanpy.config import DEFAULT_VNI_RANGE, Settings
from vxlanpy.dataplane.fake import FakeFirewall, FakeLinks
from vxlanpy.driver import Driver
from vxlanpy.errors import DataplaneError, InvalidOption
from vxlanpy.ipam import Ipam
from vxlanpy.operator.sandbox import Plumbed, Plumbing
from vxlanpy.store.memory import MemoryStore
from vxlanpy.wiring import assemble

NET = "a" * 64
EP = "c" * 64

NETWORK_METHODS = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.AllocateNetwork",
    "NetworkDriver.FreeNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
]
CLI_PATHS = ["vxlanpy/gc", "vxlanpy/attach", "vxlanpy/detach", "vxlanpy/nodes/rm"]  # the operator's endpoints (api.py)
NUMERIC_OPTIONS = ("vni", "mtu", "dstport", "ttl", "com.docker.network.driver.mtu")
IPAM_METHODS = [
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
]
FIELDS = [
    "NetworkID",
    "EndpointID",
    "Options",
    "IPv4Data",
    "IPv6Data",
    "Interface",
    "SandboxKey",
    "Address",
    "AddressIPv6",
    "MacAddress",
    "Pool",
    "Gateway",
    "AddressSpace",
    "SubPool",
    "V6",
    "PoolID",
    "DiscoveryType",
    "com.docker.network.generic",
    "com.docker.network.portmap",
    "vni",
    "mtu",
    "peers",
    "HostPort",
    "Proto",
]

nasty_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            NET,
            EP,
            "",
            "../../etc/passwd",
            "a/b",
            "10.0.0.0/33",
            "10.0.0.1/24",
            "fd00::/64",
            "::1",
            "256.1.1.1",
            "not-a-cidr",
            "é" * 64,
            "0" * 64,
            "A" * 64,
            "x" * 5000,
            "vxlanpy-local",
            "02:42:ac:11:00:02",
            "\x00",
            "com.docker.network.gateway",
            "4789",
            "-1",
            "1e9",
            # digits of other scripts: str.isdigit() accepts them, int() refuses "²" and reads "١٢" as 12
            "²",
            "١٢",
            "４７８９",
            "1" * 5000,  # more digits than int() converts
            "1_000",
        ]
    ),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),  # any script's digits
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), nasty_text)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | nasty_text, children, max_size=5)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def objects_with(*keys: str) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are the ones a handler reads, each present or not, with any JSON value."""
    return st.fixed_dictionaries({}, optional={key: json_values for key in keys})


port_bindings = st.lists(objects_with("Proto", "IP", "Port", "HostIP", "HostPort", "HostPortEnd"), max_size=3)
valid_port_bindings = st.lists(  # well-formed ones too, so that bindings are also published, not only refused
    st.fixed_dictionaries(
        {"Proto": st.sampled_from([6, 17, 132]), "Port": st.integers(1, 65535)},
        optional={"HostPort": st.integers(0, 65535), "HostIP": st.sampled_from(["", "0.0.0.0", "127.0.0.1"])},
    ),
    min_size=1,
    max_size=3,
)
interfaces = objects_with("Address", "AddressIPv6", "MacAddress")


def nested(depth: int, field: str) -> bytes:
    """A valid JSON object whose `field` nests lists `depth` levels deep."""
    return b'{"' + field.encode() + b'": ' + b"[" * depth + b"]" * depth + b"}"


deep_bodies = st.one_of(
    # unterminated nesting far past the parser's recursion limit (a RecursionError, once a 500)
    st.integers(min_value=1_000, max_value=60_000).map(lambda depth: b"[" * depth),
    st.integers(min_value=1_000, max_value=12_000).map(lambda depth: b'{"a":' * depth),
    # valid JSON nested deeper than any libnetwork request
    st.builds(nested, st.integers(min_value=33, max_value=3_000), st.sampled_from(FIELDS)),
)
huge_bodies = st.sampled_from(  # over the 1 MiB limit (a RequestEntityTooLarge, once a 500 on /vxlanpy/*)
    [b"{" + b" " * (1 << 20) + b"}", b"[" * ((1 << 20) + 1), json.dumps({"NetworkID": "a" * (1 << 20)}).encode()]
)
raw_bodies = st.one_of(
    bodies.map(lambda body: json.dumps(body).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"{", b"{}" * 3, '{"NetworkID": "é"}'.encode()]),
    deep_bodies,
    huge_bodies,
)


class NoSandboxes:
    """/vxlanpy/attach must never reach a real namespace from the fuzz tests."""

    def netns_exists(self, path: str) -> bool:
        return False

    def plumb(self, plumbing: Plumbing) -> Plumbed:
        raise DataplaneError("the fuzz tests plumb no namespace")

    def vxlan_device(self, name: str) -> dict[str, Any] | None:
        return None


def make_app() -> tuple[Any, MemoryStore, FakeLinks, FakeFirewall]:
    store, links, firewall = MemoryStore(), FakeLinks(), FakeFirewall()
    driver = Driver(store, links, firewall, vni_range=(100, 200), port_is_free=lambda mapping: True)
    app = create_app(assemble(driver, Settings(), ipam=Ipam(store, host="fuzz"), sandboxes=NoSandboxes()))
    # a network and an endpoint to aim at, so that calls on existing objects are exercised too; if setting them up
    # failed, every consistency check below would hold on empty state
    client = app.test_client()
    network = client.post(
        "/NetworkDriver.CreateNetwork",
        data=json.dumps(
            {
                "NetworkID": NET,
                "Options": {},
                "IPv4Data": [{"AddressSpace": "x", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}],
            }
        ),
    )
    endpoint = client.post(
        "/NetworkDriver.CreateEndpoint",
        data=json.dumps(
            {
                "NetworkID": NET,
                "EndpointID": EP,
                "Interface": {"Address": "10.1.0.2/24"},
            }
        ),
    )
    assert (network.status_code, network.get_json(force=True)) == (200, {}), network.data
    assert endpoint.status_code == 200, endpoint.data
    made = store.get_endpoint(EP)
    assert made is not None and made.host_veth in links.endpoints and len(links.networks) == 1
    return client, store, links, firewall


def assert_consistent(store: MemoryStore, links: FakeLinks, firewall: FakeFirewall) -> None:
    networks = store.list_networks()
    assert {network.bridge for network in networks} == set(links.networks)
    assert {network.vni for network in networks} == set(firewall.networks)
    assert {endpoint.host_veth for endpoint in store.list_endpoints()} == set(links.endpoints)


def check(method: str, raw: bytes) -> None:
    client, store, links, firewall = make_app()
    response = client.post(f"/{method}", data=raw)
    body = json.loads(response.data)
    error_key = "Error" if method.startswith("IpamDriver.") else "Err"
    assert isinstance(body, dict)
    if response.status_code != 200:
        assert 400 <= response.status_code < 600
        assert list(body) == [error_key] and isinstance(body[error_key], str) and body[error_key]
        assert "internal error" not in body[error_key], body
        assert "Traceback" not in body[error_key]
    assert_consistent(store, links, firewall)


fuzz_settings = settings(
    max_examples=int(os.environ.get("VXLANPY_FUZZ_EXAMPLES", "40")),
    derandomize=not os.environ.get("VXLANPY_FUZZ_RANDOM"),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@fuzz_settings
@given(method=st.sampled_from(NETWORK_METHODS), raw=raw_bodies)
def test_network_driver_calls_survive_any_body(method: str, raw: bytes) -> None:
    check(method, raw)


@fuzz_settings
@given(path=st.sampled_from(CLI_PATHS), raw=raw_bodies)
def test_cli_endpoints_survive_any_body(path: str, raw: bytes) -> None:
    check(path, raw)


@fuzz_settings
@given(
    path=st.sampled_from(CLI_PATHS),
    body=objects_with("network", "target", "netns", "ipv4", "ipv6", "ifname", "dry_run", "forget", "host", "force"),
    aimed=st.booleans(),
)
def test_cli_endpoints_survive_any_field_values(path: str, body: dict[str, Any], aimed: bool) -> None:
    if aimed:  # at the existing network, so that the handlers get past the id check
        body = {**body, "network": NET}
    check(path, json.dumps(body).encode())


@fuzz_settings
@given(method=st.sampled_from(IPAM_METHODS), raw=raw_bodies)
def test_ipam_calls_survive_any_body(method: str, raw: bytes) -> None:
    check(method, raw)


@fuzz_settings
@given(
    method=st.sampled_from(IPAM_METHODS),
    body=objects_with("AddressSpace", "Pool", "SubPool", "Options", "V6", "PoolID", "Address"),
)
def test_ipam_calls_survive_any_field_values(method: str, body: dict[str, Any]) -> None:
    check(method, json.dumps(body).encode())


@fuzz_settings
@given(
    method=st.sampled_from(NETWORK_METHODS),
    body=objects_with("NetworkID", "EndpointID", "Options", "IPv4Data", "IPv6Data", "Interface", "SandboxKey"),
    ids=st.booleans(),
)
def test_network_calls_survive_any_field_values(method: str, body: dict[str, Any], ids: bool) -> None:
    if ids:  # aim at the existing network and endpoint, so that the handlers get past the id checks
        body = {**body, "NetworkID": NET, "EndpointID": EP}
    check(method, json.dumps(body).encode())


@fuzz_settings
@given(
    generic=st.dictionaries(
        st.sampled_from(
            [
                "vni",
                "mtu",
                "dstport",
                "ttl",
                "learning",
                "remote",
                "peers",
                "group",
                "local",
                "dev",
                "com.docker.network.driver.mtu",
                "bogus",
            ]
        ),
        json_values,
        max_size=4,
    )
)
def test_any_network_options_are_refused_cleanly_or_accepted_whole(generic: dict[str, Any]) -> None:
    client, store, links, firewall = make_app()
    body = {
        "NetworkID": "b" * 64,
        "Options": {"com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "x", "Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}],
    }
    response = client.post("/NetworkDriver.CreateNetwork", data=json.dumps(body))
    reply = json.loads(response.data)
    if response.status_code == 200:
        network = store.get_network("b" * 64)
        assert network is not None
        # a number is taken only when written in ASCII digits (not "١٢", not "²"), and means what it says
        for name in NUMERIC_OPTIONS:
            if name in generic:
                written = str(generic[name]).strip()
                assert written.isascii() and written.isdigit(), (name, generic[name])
        if "vni" in generic:
            assert network.vni == int(str(generic["vni"]).strip())
    else:
        assert response.status_code in (400, 409) and "internal error" not in reply["Err"], reply
        assert store.get_network("b" * 64) is None
    assert_consistent(store, links, firewall)


@fuzz_settings
@given(portmap=st.one_of(port_bindings, valid_port_bindings, json_values))
def test_any_port_bindings_are_refused_cleanly_or_published_whole(portmap: Any) -> None:
    client, store, links, firewall = make_app()
    body = {"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": portmap}}
    response = client.post("/NetworkDriver.ProgramExternalConnectivity", data=json.dumps(body))
    reply = json.loads(response.data)
    endpoint = store.get_endpoint(EP)
    assert endpoint is not None
    published = {(port.proto, port.host_port) for port in endpoint.ports}
    if response.status_code == 200:
        assert reply == {}, reply
        # what the store records is what the firewall publishes: one rule per binding at most
        assert published == firewall.published() and len(endpoint.ports) <= len(portmap or [])
    else:
        # refused whole, with a message: no rule, no recorded port
        assert response.status_code in (400, 409), reply
        assert list(reply) == ["Err"] and reply["Err"] and "internal error" not in reply["Err"], reply
        assert endpoint.ports == () and firewall.published() == set()
    assert_consistent(store, links, firewall)


@fuzz_settings
@given(interface=st.one_of(interfaces, json_values))
def test_any_endpoint_interface_is_refused_cleanly(interface: Any) -> None:
    client, store, links, firewall = make_app()
    body = {"NetworkID": NET, "EndpointID": "d" * 64, "Interface": interface}
    response = client.post("/NetworkDriver.CreateEndpoint", data=json.dumps(body))
    reply = json.loads(response.data)
    if response.status_code != 200:
        assert "internal error" not in reply["Err"], reply
        assert store.get_endpoint("d" * 64) is None
    assert_consistent(store, links, firewall)


number_texts = st.one_of(nasty_text, st.integers(min_value=-5, max_value=2**40).map(str))


@fuzz_settings
@given(
    name=st.sampled_from(["VXLANPY_THREADS", "VXLANPY_LEASE_TTL", "VXLANPY_ETCD_TIMEOUT", "VXLANPY_VNI_RANGE"]),
    raw=st.one_of(number_texts, st.tuples(number_texts, number_texts).map("-".join)),
)
def test_number_settings_are_ascii_or_refused_by_name(name: str, raw: str) -> None:
    """A setting is refused with its name, or means exactly its ASCII digits; never another exception."""
    try:
        settings = Settings.from_env({name: raw})
    except InvalidOption as exc:
        assert str(exc).startswith(f"{name}=") and "is not valid" in str(exc)
        return
    if name == "VXLANPY_VNI_RANGE" and not raw:
        assert settings.vni_range == DEFAULT_VNI_RANGE  # empty: not set
        return
    parts = raw.split("-") if name == "VXLANPY_VNI_RANGE" else [raw]
    assert all(part.isascii() and part.isdigit() for part in parts), raw
    value = {
        "VXLANPY_THREADS": settings.threads,
        "VXLANPY_LEASE_TTL": settings.lease_ttl,
        "VXLANPY_ETCD_TIMEOUT": settings.etcd_timeout,
        "VXLANPY_VNI_RANGE": settings.vni_range,
    }[name]
    expected = tuple(int(part) for part in parts) if name == "VXLANPY_VNI_RANGE" else int(raw)
    assert value == expected


@fuzz_settings
@given(name=st.sampled_from(NUMERIC_OPTIONS), raw=number_texts)
def test_numeric_options_take_ascii_digits_only(name: str, raw: str) -> None:
    """`-o vni=١٢` was VNI 12 and `-o vni=²` an internal error: a number is ASCII digits, or a clear 400."""
    client, store, links, firewall = make_app()
    body = {
        "NetworkID": "b" * 64,
        "Options": {"com.docker.network.generic": {name: raw}},
        "IPv4Data": [{"AddressSpace": "x", "Pool": "10.2.0.0/24", "Gateway": "10.2.0.1/24"}],
    }
    response = client.post("/NetworkDriver.CreateNetwork", data=json.dumps(body))
    reply = json.loads(response.data)
    if response.status_code == 200:
        assert raw.strip().isascii() and raw.strip().isdigit(), raw
        network = store.get_network("b" * 64)
        assert network is not None
        if name == "vni":
            assert network.vni == int(raw)
    else:
        assert response.status_code in (400, 409), reply
        assert reply["Err"].startswith(f"{name}=") or "vni" in reply["Err"], reply
        assert store.get_network("b" * 64) is None
    assert_consistent(store, links, firewall)
