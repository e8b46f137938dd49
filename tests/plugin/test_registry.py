"""`docker plugin install` from a registry (Debian's docker-registry on the namespace's loopback), then
`docker plugin set` and `docker network create -d <plugin> --ipam-driver <plugin>`."""

from __future__ import annotations

import ipaddress
import json
import secrets

from tests.multihost.cluster import ping_until

from .harness import LABEL, REGISTRY_PLUGIN, TIMINGS, Engine


def test_install_from_registry_set_env_and_create_a_network(engine: Engine, built: str) -> None:
    assert REGISTRY_PLUGIN not in {p["Name"] for p in engine.plugins()}, "the build's copy must be gone"
    install = engine.docker("plugin", "install", "--grant-all-permissions", "--disable", REGISTRY_PLUGIN, timeout=300)
    assert f"Installed plugin {REGISTRY_PLUGIN}" in install.stdout, install.stdout + install.stderr
    try:
        engine.configure(
            REGISTRY_PLUGIN,
            "VXLANPY_DEV=ul1",  # not the default route's interface (ul0)
            "VXLANPY_VNI_RANGE=7000-7010",
            "VXLANPY_IPAM_POOL4=10.77.0.0/16:24",
            "VXLANPY_LOG_LEVEL=debug",
        )
        env = engine.plugin_inspect(REGISTRY_PLUGIN)["Settings"]["Env"]
        assert "VXLANPY_DEV=ul1" in env and "VXLANPY_VNI_RANGE=7000-7010" in env, env

        # The state directory is a bind mount: runc refuses a missing source, hence `mkdir` in the README.
        engine.configure(REGISTRY_PLUGIN, f"state.source={engine.workdir / 'no-such-dir'}")
        refused = engine.docker("plugin", "enable", REGISTRY_PLUGIN, check=False, timeout=60)
        assert refused.returncode != 0 and "no such file or directory" in refused.stderr, refused.stderr

        with engine.active(REGISTRY_PLUGIN, engine.workdir / "state-registry") as timing:
            TIMINGS["plugin start, installed from the registry"] = timing.summary()
            name = f"vxpl-reg-{secrets.token_hex(3)}"
            # Exactly what a user types: no -o vni, no --subnet; the driver and IPAM named by the plugin.
            engine.docker(
                "network", "create", "-d", REGISTRY_PLUGIN, "--ipam-driver", REGISTRY_PLUGIN,
                "--label", f"{LABEL}=1", name,
            )  # fmt: skip
            network = json.loads(engine.docker("network", "inspect", name).stdout)[0]
            assert network["Driver"] == REGISTRY_PLUGIN and network["IPAM"]["Driver"] == REGISTRY_PLUGIN
            subnet = ipaddress.IPv4Network(network["IPAM"]["Config"][0]["Subnet"])
            assert subnet.subnet_of(ipaddress.IPv4Network("10.77.0.0/16")), subnet  # VXLANPY_IPAM_POOL4

            vxlan = engine.link("vxlan-7000")  # the lowest VNI of VXLANPY_VNI_RANGE
            assert vxlan is not None, f"no vxlan-7000: {sorted(engine.links())}\n{engine.plugin_log(REGISTRY_PLUGIN)}"
            info = vxlan["linkinfo"]["info_data"]
            assert info["link"] == "ul1" and info["local"] == "10.252.0.1", info  # VXLANPY_DEV

            one, two = engine.run_container(name), engine.run_container(name)
            ok, output = ping_until(one, two.name, timeout=10)
            assert ok, f"{one.name} cannot ping {two.name}: {output}"
            ok, output = ping_until(one, network["IPAM"]["Config"][0]["Gateway"], timeout=5)
            assert ok, output

        # A setting the plugin refuses at its start (swarm's global scope without etcd): `docker plugin enable`
        # fails and the plugin's log, in dockerd's, says what to set.
        engine.configure(REGISTRY_PLUGIN, "VXLANPY_SCOPE=global")
        refused = engine.docker("plugin", "enable", REGISTRY_PLUGIN, check=False, timeout=120)
        assert refused.returncode != 0, refused.stdout
        log = engine.plugin_log(REGISTRY_PLUGIN)
        assert "VXLANPY_SCOPE=global (swarm networks) needs the etcd store" in log, f"{refused.stderr}\n{log}"
    finally:
        engine.docker("plugin", "rm", "-f", REGISTRY_PLUGIN, check=False)
