"""What the sections share during one run: its results, and the resources made on first use (the Docker client,
the single-host plugin, the macvlan parent, the multi-host cluster), each removed when the run ends."""

from __future__ import annotations

import os
import secrets
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.docker_cleanup import remove_labelled

from .docker_side import BENCH_LABEL, docker_client, ensure_image
from .params import Params
from .plugin import BenchPlugin
from .results import Results
from .runner import Namespaces, owner_pidfile, run, say


class Bench:
    def __init__(self, params: Params, stack: ExitStack, workdir: Path) -> None:
        self.params = params
        self.stack = stack
        self.workdir = workdir
        self.results = Results()
        self.suffix = secrets.token_hex(3)
        self.ns = Namespaces(self.suffix)
        pidfile = owner_pidfile(self.suffix)
        pidfile.write_text(f"{os.getpid()}\n")
        stack.callback(lambda: pidfile.unlink(missing_ok=True))
        stack.callback(self.ns.cleanup)
        self.cross_network: str | None = None  # the vxlanpy network on the cluster's h1 and h2, once made
        self._client: Any = None
        self._plugin: BenchPlugin | None = None
        self._cluster: Any = None
        self._dummy: str | None = None

    # Each resource registers its own cleanup when it is made; the stack runs them last made, first removed.

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
            self.stack.callback(self._client.close)
            leftovers = remove_labelled(self._client, BENCH_LABEL)  # from a run that was killed
            if leftovers:
                say("WARNING: could not remove objects of an earlier run: " + "; ".join(leftovers))
            self.stack.callback(self._remove_docker_objects)
            ensure_image(self._client, self.stack)
        return self._client

    def _remove_docker_objects(self) -> None:
        problems = remove_labelled(self._client, BENCH_LABEL)
        if problems:
            say("WARNING: cleanup: " + "; ".join(problems))

    @property
    def plugin(self) -> BenchPlugin:
        if self._plugin is None:
            plugin = BenchPlugin(self.workdir / "plugin")
            plugin.workdir.mkdir(parents=True, exist_ok=True)
            self.stack.callback(plugin.stop)
            plugin.start()
            self._plugin = plugin
            _ = self.client  # docker objects on vxlanpy must go before the plugin stops (LIFO)
        return self._plugin

    @property
    def dummy(self) -> str:
        if self._dummy is None:
            # A veth pair rather than a dummy: the dummy module is not available everywhere.
            name, peer = f"vxbmv-{self.suffix}", f"vxbmp-{self.suffix}"
            run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer])
            self.stack.callback(lambda: run(["ip", "link", "del", name], check=False))
            run(["ip", "link", "set", peer, "up"])
            run(["ip", "link", "set", name, "up"])
            self._dummy = name
        return self._dummy

    @property
    def cluster(self) -> Any:
        if self._cluster is None:
            from tests.multihost import cluster as mh

            reason = mh.missing_prerequisites()
            if reason:
                raise RuntimeError(f"the multi-host harness cannot run here: {reason}")
            mh.remove_stale_clusters()
            built = mh.Cluster()
            self._cluster = built

            def teardown() -> None:
                problems = built.teardown()
                if problems:
                    say("WARNING: multi-host teardown: " + "; ".join(problems))

            self.stack.callback(teardown)
            started = time.monotonic()
            say("building the multi-host harness (3 namespaces, 3 dockerd, etcd) ...")
            built.build()
            built.start_plugins()
            built.plugins_wanted = True
            say(f"multi-host harness {built.suffix} up in {time.monotonic() - started:.1f} s")
        return self._cluster

    def stop_plugin(self) -> None:
        """Stop the single-host plugin (after removing what Docker holds on it) before the cluster runs."""
        if self._plugin is not None and self._client is not None:
            self._remove_docker_objects()
            self._plugin.stop()
