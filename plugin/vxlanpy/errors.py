"""The one exception hierarchy of vxlanpy.

Every error a client can see is a VxlanpyError whose message says what is wrong and how to fix it.
Lower layers (netlink, iptables, SQLite, etcd) are translated into these at their boundary, so the
wire layer only ever has to turn a VxlanpyError into {"Err": message} with its HTTP status.
"""

from __future__ import annotations


class VxlanpyError(Exception):
    """Base of every error vxlanpy raises on purpose.  `status` is the HTTP status sent to dockerd."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadRequest(VxlanpyError):
    """The request itself is malformed: not JSON, a missing field, a wrong type, an id not in Docker's form."""

    status = 400


class InvalidOption(BadRequest):
    """A user-supplied network or endpoint option is unknown or has a bad value."""


class NotFound(VxlanpyError):
    status = 404


class Conflict(VxlanpyError):
    """The request clashes with existing state: a VNI in use, a host port taken, a device owned by someone else."""

    status = 409


class NoFreeVni(Conflict):
    """Every VNI of the range asked for is taken."""


class VniTaken(Conflict):
    """Another VXLAN device of the host, not vxlanpy's (Docker's overlay driver, swarm's ingress network), already
    receives this VNI on this UDP port: the kernel refuses a second one."""

    def __init__(self, message: str, vni: int) -> None:
        super().__init__(message)
        self.vni = vni


class DataplaneError(VxlanpyError):
    """The kernel refused a change (netlink or firewall)."""

    status = 500


class StoreError(VxlanpyError):
    """The state store failed or could not be reached."""

    status = 503


class PayloadTooLarge(BadRequest):
    """The request body is larger than the endpoint accepts."""

    status = 413
