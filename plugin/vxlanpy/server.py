"""Serving: gunicorn on the plugin's Unix socket, in the foreground.

One worker process with threads: dockerd sends concurrent requests, and a single process lets the driver
serialise work per network with in-process locks and share one netlink socket and one SQLite connection.
Several processes would each need their own and would race on the same devices.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from .config import Settings

SOCKET_UMASK = 0o117  # socket mode 0660: root and the docker group only


def configure_logging(level: str) -> None:
    # pyroute2 resets its logger to NOTSET (inherit the root's level) when it is first imported: import it before
    # setting the level below, or at debug level every netlink message is formatted and logged (repr of every
    # attribute), which doubled the latency of each request.
    import pyroute2  # noqa: F401

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Their debug output is per netlink message: far too much even when debugging vxlanpy.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


class PluginServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, metrics_addr: tuple[str, int] | None = None) -> None:
        self.settings = settings
        self.metrics_addr = metrics_addr
        self.metrics_server: Any = None
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": [f"unix:{self.settings.socket}"],
            "umask": SOCKET_UMASK,
            "workers": 1,
            "worker_class": "gthread",
            "threads": self.settings.threads,
            # A request can take a while when the kernel or store is slow; never kill it half-way.
            "timeout": 120,
            "graceful_timeout": 10,
            "loglevel": self.settings.log_level,
            "accesslog": None,
            "proc_name": "vxlanpy",
            # gunicorn's control socket lives in ~/.gunicorn and would clash between side-by-side instances.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:  # control_socket_disable only exists in newer gunicorn
                self.cfg.set(key, value)

    def load(self) -> Any:
        configure_logging(self.settings.log_level)
        from .app import create_app

        app = create_app(settings=self.settings)
        if self.metrics_addr is not None:
            # In the worker, beside the app whose counters it shows (VXLANPY_METRICS_ADDR; off by default).
            from .metrics import MetricsServer

            operations = app.extensions["vxlanpy.operations"]
            self.metrics_server = MetricsServer(self.metrics_addr, app.extensions["vxlanpy.metrics"], operations.health)
            self.metrics_server.start()
        return app


def serve(settings: Settings, metrics_addr: tuple[str, int] | None = None) -> None:
    Path(settings.socket).parent.mkdir(parents=True, exist_ok=True)
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ.setdefault("SERVER_SOFTWARE", "vxlanpy")
    PluginServer(settings, metrics_addr).run()
