"""The `vxlanpy` command."""

from __future__ import annotations

import sys

import click

from .config import Settings
from .errors import VxlanpyError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """vxlanpy: a Docker network plugin for VXLAN networks.

    \b
    Examples:
      sudo vxlanpy serve                       # run the plugin in the foreground
      docker network create -d vxlanpy -o vni=42 demo
    """


@main.command()
def serve() -> None:
    """Serve the plugin on $VXLANPY_SOCKET (default /run/docker/plugins/vxlanpy.sock), in the foreground.

    \b
    Configuration comes from the environment (see README):
      VXLANPY_SOCKET, VXLANPY_STATE_DIR, VXLANPY_STORE, VXLANPY_LOG_LEVEL,
      VXLANPY_DEV, VXLANPY_VNI_RANGE, VXLANPY_THREADS
    """
    from .server import serve as run_server

    try:
        settings = Settings.from_env()
    except VxlanpyError as exc:
        click.echo(f"vxlanpy: {exc}", err=True)
        sys.exit(2)
    run_server(settings)


if __name__ == "__main__":
    main()
