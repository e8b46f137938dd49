"""Kernel-facing layer: links (bridge, vxlan, veth, FDB) through pyroute2, and the host firewall.

`base` holds the small interfaces the driver depends on, `fake` in-memory versions for unit tests,
`netlink` and `iptables` the real implementations.
"""
