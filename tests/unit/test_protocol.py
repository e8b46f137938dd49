"""Golden tests for each libnetwork call: the JSON dockerd sends in, the JSON it must get back."""

from __future__ import annotations

import logging

import pytest

from .conftest import EP, NET, Harness


def test_activate_and_capabilities(harness: Harness) -> None:
    assert harness.call("Plugin.Activate") == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})
    assert harness.call("NetworkDriver.GetCapabilities", raw=b"") == (
        200,
        {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": True},
    )


def test_create_network_golden(harness: Harness) -> None:
    status, body = harness.create_network(generic={"vni": "42", "mtu": "1400"})
    assert (status, body) == (200, {})
    network = harness.store.get_network(NET)
    assert network is not None and network.vni == 42 and network.config.mtu == 1400
    assert harness.links.networks["vxbr-42"].network_id == NET


def test_create_endpoint_returns_mac_only_when_docker_gave_none(harness: Harness) -> None:
    harness.create_network()
    status, body = harness.create_endpoint()
    assert status == 200
    assert body == {"Interface": {"MacAddress": "02:42:0a:01:00:02"}}
    status, body = harness.create_endpoint("e" * 64, Address="10.1.0.3/24", MacAddress="02:00:00:00:00:01")
    assert (status, body) == (200, {"Interface": {}})  # echoing Docker's fields back would fail the call


def test_join_returns_interface_and_gateway(harness: Harness) -> None:
    harness.create_network(ipv6=[{"AddressSpace": "LocalDefault", "Pool": "fd00:1::/64", "Gateway": "fd00:1::1/64"}])
    harness.create_endpoint(AddressIPv6="fd00:1::2/64")
    status, body = harness.call(
        "NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x", "Options": {}},
    )
    assert status == 200
    assert body == {
        "InterfaceName": {"SrcName": "vxc-ccccccccccc", "DstPrefix": "eth"},
        "Gateway": "10.1.0.1",
        "GatewayIPv6": "fd00:1::1",
    }


def test_join_on_internal_network_has_no_gateway(harness: Harness) -> None:
    harness.create_network(options={"com.docker.network.internal": True})
    harness.create_endpoint()
    status, body = harness.call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x"})
    assert status == 200 and "Gateway" not in body


def test_endpoint_oper_info(harness: Harness) -> None:
    harness.create_network(generic={"vni": "7"})
    harness.create_endpoint()
    status, body = harness.call("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert status == 200
    assert body["Value"]["vni"] == 7 and body["Value"]["veth"] == "vxh-ccccccccccc"


def test_leave_and_delete_endpoint_are_idempotent(harness: Harness) -> None:
    harness.create_network()
    harness.create_endpoint()
    for _ in range(2):
        assert harness.call("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
        assert harness.call("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
    assert harness.links.endpoints == {}
    # an endpoint the plugin never saw
    assert harness.call("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": "f" * 64}) == (200, {})


def test_delete_network_golden(harness: Harness) -> None:
    harness.create_network()
    assert harness.call("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})
    assert harness.links.networks == {} and harness.store.list_networks() == []
    assert harness.call("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})


@pytest.mark.parametrize("method", ["NetworkDriver.DiscoverNew", "NetworkDriver.DiscoverDelete"])
def test_discovery_is_accepted(harness: Harness, method: str) -> None:
    assert harness.call(method, {"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.1"}}) == (200, {})


def test_allocate_network_is_refused_by_a_local_scope_plugin(harness: Harness) -> None:
    status, body = harness.call("NetworkDriver.AllocateNetwork", {"NetworkID": NET, "Options": {}})
    assert status == 400 and "VXLANPY_SCOPE=global" in body["Err"] and "etcd" in body["Err"]
    assert harness.call("NetworkDriver.FreeNetwork", {"NetworkID": NET}) == (200, {})


def test_program_and_revoke_external_connectivity(harness: Harness) -> None:
    harness.create_network(generic={"vni": "9"})
    harness.create_endpoint()
    portmap = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]
    body = {"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": portmap}}
    assert harness.call("NetworkDriver.ProgramExternalConnectivity", body) == (200, {})
    assert harness.firewall.published() == {("tcp", 8080)}
    assert harness.call("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
    assert harness.firewall.published() == set()


def test_host_port_already_taken_is_refused(harness: Harness) -> None:
    harness.create_network()
    harness.create_endpoint()
    harness.busy_ports.add(8080)
    portmap = [{"Proto": 6, "Port": 80, "HostPort": 8080}]
    status, body = harness.call(
        "NetworkDriver.ProgramExternalConnectivity",
        {"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": portmap}},
    )
    assert status == 409 and "8080/tcp is already allocated" in body["Err"]
    assert harness.firewall.published() == set()


def test_ephemeral_host_port_is_chosen(harness: Harness) -> None:
    harness.create_network()
    harness.create_endpoint()
    harness.busy_ports.add(49153)
    portmap = [{"Proto": 17, "Port": 53, "HostPort": 0}]
    harness.call(
        "NetworkDriver.ProgramExternalConnectivity",
        {"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap": portmap}},
    )
    assert harness.firewall.published() == {("udp", 49154)}


def test_unknown_path_is_404_json(harness: Harness) -> None:
    status, body = harness.call("NetworkDriver.Frobnicate", {})
    assert status == 404 and "unknown method" in body["Err"]
    response = harness.client.get("/Plugin.Activate")
    assert response.status_code == 405 and "Err" in response.get_json(force=True)


@pytest.mark.parametrize(
    ("raw", "phrase"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"NetworkID": 5}', "wrong type"),
        (b'{"NetworkID": "../../etc/passwd"}', "not a Docker network id"),
        (b"{}", "missing the field NetworkID"),
        (
            b"",
            "missing the field NetworkID: its body is empty, as when dockerd retries a call after the plugin restarted",
        ),
        ('{"NetworkID": "é"}'.encode(), "not a Docker network id"),
    ],
)
def test_bad_requests_get_a_clear_err(harness: Harness, raw: bytes, phrase: str) -> None:
    status, body = harness.call("NetworkDriver.CreateNetwork", raw=raw)
    assert status == 400 and phrase in body["Err"]
    assert harness.store.list_networks() == [] and harness.links.networks == {}


def test_bad_cidr_in_ipam_data(harness: Harness) -> None:
    status, body = harness.create_network(ipv4=[{"Pool": "10.0.0.0/33", "Gateway": "10.0.0.1/24"}])
    assert status == 400 and "is not a CIDR" in body["Err"]


def test_endpoint_on_unknown_network(harness: Harness) -> None:
    status, body = harness.create_endpoint()
    assert status == 404 and "not known to vxlanpy" in body["Err"]


def test_internal_bug_never_leaks_a_traceback(harness: Harness) -> None:
    harness.driver.join = None  # type: ignore[assignment,method-assign]
    status, body = harness.call("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP})
    assert status == 500 and body == {"Err": "internal error in vxlanpy (TypeError); see the plugin log"}


def test_every_protocol_answers_a_bug_and_logs_it_the_same_way(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The network driver, the IPAM driver and the operator's endpoints share one error path: a JSON error under
    the key their client reads, no traceback for the client, one log line with the traceback for the operator."""
    harness.driver.join = None  # type: ignore[assignment,method-assign]
    harness.store.list_networks = None  # type: ignore[assignment,method-assign]
    harness.store.claim_pool = None  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.INFO, logger="vxlanpy.requests"):
        network = harness.client.post("/NetworkDriver.Join", json={"NetworkID": NET, "EndpointID": EP})
        ipam = harness.client.post(
            "/IpamDriver.RequestPool", json={"AddressSpace": "vxlanpy-local", "Pool": "10.9.0.0/24"}
        )
        operator = harness.client.get("/vxlanpy/ls")
    assert (network.status_code, network.get_json(force=True)) == (
        500,
        {"Err": "internal error in vxlanpy (TypeError); see the plugin log"},
    )
    assert (ipam.status_code, ipam.get_json(force=True)) == (
        500,
        {"Error": "internal error in vxlanpy (TypeError); see the plugin log"},
    )
    assert (operator.status_code, operator.get_json(force=True)) == (
        500,
        {"Err": "internal error in vxlanpy (TypeError); see the plugin log"},
    )
    assert network.mimetype == ipam.mimetype == operator.mimetype
    crashes = [record for record in caplog.records if record.getMessage().endswith(" crashed")]
    assert [record.getMessage() for record in crashes] == [
        "NetworkDriver.Join crashed",
        "IpamDriver.RequestPool crashed",
        "vxlanpy.ls crashed",
    ]
    assert all(record.exc_info is not None for record in crashes)  # the traceback is the operator's
    lines = [record.getMessage() for record in caplog.records if not record.getMessage().endswith(" crashed")]
    assert lines[0].startswith(
        f"NetworkDriver.Join network={NET[:12]} endpoint={EP[:12]} error 500: internal error in vxlanpy (TypeError)"
    )
    assert lines[1].startswith("IpamDriver.RequestPool pool=10.9.0.0/24 address=- error 500: internal error")
    assert lines[2].startswith("vxlanpy.ls error 500: internal error in vxlanpy (TypeError)")


def test_the_request_log_keeps_one_line_per_request_whatever_the_ids(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vxlanpy.requests"):
        harness.call("NetworkDriver.DeleteNetwork", {"NetworkID": "x\nforged log line"})
        harness.call("NetworkDriver.Nonsense", {})
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith("NetworkDriver.DeleteNetwork network='x\\nforged log' endpoint=- error 400: "), lines
    assert "\n" not in lines[0]
    assert lines[1].startswith("unknown error 404: unknown method 'NetworkDriver.Nonsense'"), lines


# -- bad input that used to reach an internal error (issue 12) ---------------------------------------------------

ALL_PATHS = [
    "Plugin.Activate",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.GwAllocCheck",
    "NetworkDriver.Join",
    "IpamDriver.RequestPool",
    "IpamDriver.RequestAddress",
    "vxlanpy/gc",
    "vxlanpy/attach",
    "vxlanpy/detach",
]


def _error(path: str, body: dict[str, object]) -> str:
    key = "Error" if path.startswith("IpamDriver.") else "Err"
    assert list(body) == [key], body
    message = body[key]
    assert isinstance(message, str)
    assert "internal error" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("path", ALL_PATHS)
@pytest.mark.parametrize("raw", [b"[" * 60_000, b'{"a":' * 12_000, b'{"Options": ' + b"[" * 40 + b"]" * 40 + b"}"])
def test_deeply_nested_json_is_refused_clearly(harness: Harness, path: str, raw: bytes) -> None:
    response = harness.client.post(f"/{path}", data=raw)
    assert response.status_code == 400
    message = _error(path, response.get_json(force=True))
    assert "nests JSON more than 32 levels deep" in message, message
    assert harness.store.list_networks() == []


def test_json_nested_as_deep_as_libnetwork_needs_is_accepted(harness: Harness) -> None:
    assert harness.create_network(generic={"vni": "42"}) == (200, {})


@pytest.mark.parametrize("path", ALL_PATHS)
def test_a_body_over_one_mib_is_413_with_the_limit(harness: Harness, path: str) -> None:
    response = harness.client.post(f"/{path}", data=b"{" + b" " * (1 << 20) + b"}")
    assert response.status_code == 413
    message = _error(path, response.get_json(force=True))
    assert "request body is larger than" in message and ("MiB" in message or "KiB" in message), message


def test_the_cli_endpoints_take_at_most_64_kib(harness: Harness) -> None:
    response = harness.client.post("/vxlanpy/attach", data=b"{" + b" " * 70_000 + b"}")
    assert response.status_code == 413
    assert response.get_json(force=True) == {
        "Err": "request body is larger than 64 KiB, the most /vxlanpy/attach accepts; "
        "the vxlanpy CLI sends a few hundred bytes"
    }


def test_a_body_over_one_mib_to_libnetwork_calls_names_the_limit(harness: Harness) -> None:
    response = harness.client.post("/NetworkDriver.CreateNetwork", data=b"{" + b" " * (1 << 20) + b"}")
    assert response.status_code == 413
    assert response.get_json(force=True) == {
        "Err": "request body is larger than 1 MiB, the most /NetworkDriver.CreateNetwork accepts; "
        "libnetwork's requests are a few KiB"
    }
