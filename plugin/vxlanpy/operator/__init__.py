"""The operator's half of vxlanpy: the `vxlanpy` command (cli/), its client of the plugin and of Docker (client),
the plugin's private endpoints it calls (api) and the work behind them (operations: context, reading, cleanup,
attachments, recovery; with attach and sandbox), the checks of `vxlanpy doctor` (doctor/), and the tables it
prints (views).

The other half, the plugin that dockerd talks to, is the rest of the package: protocol, driver, ipam, cluster,
store and dataplane.  Nothing in that half imports from here, except the app that mounts the private endpoints.
"""
