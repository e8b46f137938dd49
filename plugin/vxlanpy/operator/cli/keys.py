"""`vxlanpy rotate-key`: a new WireGuard keypair for this host's encrypted networks."""

from __future__ import annotations

import click

from .base import Env, main, pass_env, print_json


@main.command("rotate-key")
@click.option("--json", "as_json", is_flag=True, help="The new and the previous public key as JSON.")
@pass_env
def rotate_key_command(env: Env, as_json: bool) -> None:
    """Give this host's WireGuard interface (encrypted networks) a new keypair, and publish its public key:
    the other hosts replace their peer within a second or so, traffic keeps flowing.  Prints the new public key;
    the private key stays in the state dir (wireguard.key, mode 0600) and is never shown.

    Refused on a single-host (SQLite) store and on a host with no encrypted network.

    \b
    Examples:
      vxlanpy rotate-key
      vxlanpy rotate-key --json | jq -r .public_key
    """
    result = env.plugin().call("POST", "/vxlanpy/rotate-key", {})
    if as_json:
        print_json({"public_key": result.get("public_key"), "previous": result.get("previous")})
        return
    click.echo(
        f"new public key {result.get('public_key')} (was {result.get('previous')}); "
        "the other hosts switch to it when they see it in etcd"
    )
