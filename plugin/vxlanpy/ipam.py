"""The IPAM driver: address pools and the addresses reserved in them, shared by every host of one store.

It knows nothing of HTTP or libnetwork's JSON (protocol_ipam.py does); it takes typed values and raises
`errors` with messages in the vocabulary of `docker network create` (--subnet, --ip-range, --gateway, --ip).

Records (an `AddressBook`, see store/base.py), keyed by the pool's CIDR ("10.60.0.0/24"):

* pool claims: one holder per RequestPool, `HOST/TOKEN-SECONDS` (`HOST/TOKEN` before claims were timed). The
  token makes every claim distinct, so that two networks of one host on the same --subnet (or a creation that
  failed half-way and released its pool) never release each other's records; the last release forgets the pool
  and everything reserved in it (libnetwork leaves the reference counting to the IPAM driver). The claim travels
  inside the PoolID handed to dockerd. SECONDS is when it was made: a claim whose network create never
  completed (the plugin was killed between RequestPool and CreateNetwork, so Docker's ReleasePool was lost) is
  released when no network row and no Docker network uses its pool, a minute after it was made or when it
  predates the plugin's start (see `orphan_pool_claims`);
* addresses: `IP -> HOST/container-TOKEN@KIND-SECONDS`, one distinct holder per RequestAddress, so a refusal can
  name the host holding an address and no two containers can ever share one.  KIND is `auto` (vxlanpy chose the
  address) or `ip` (Docker asked for it: `--ip`, or an `--aux-address` that no endpoint will ever hold) and
  SECONDS the time of the reservation: `vxlanpy gc` releases an `auto` reservation that no endpoint holds
  after a minute (Docker's ReleaseAddress was lost: the plugin was down or its store read-only), see
  `orphan_reservations`;
* swarm networks (a global-scope plugin): the swarm manager's allocator reserves every task's, VIP's and load
  balancer's address, `IP -> HOST/swarm-CLAIM.TOKEN@KIND-SECONDS` (CLAIM: its pool claim's TOKEN-SECONDS), and each
  node then asks for the same address again when it creates the endpoint.  A node's explicit request for an
  address that a swarm holder has is granted without a record of its own, and its release leaves the address
  to the allocator, the only one that releases it.  The allocator asking again for an address an earlier run of
  it reserved (a restarted or new leader re-requests its pools and addresses) takes it over; the same run
  asking twice is refused, as is any request from a network that is not the swarm's for an address anyone holds;
* the gateway: `IP -> "gateway"`, plus the record `"gateway" -> IP` that fixes the pool's gateway atomically
  for every host (the first host to reserve it wins; the others adopt it, or are refused when they ask for a
  different --gateway).

Addresses are unique within the whole pool: hosts that share a --subnet with different --ip-range values
allocate from their own range without ever colliding, and share one gateway.

Limits: pools are matched by exact CIDR, so an explicit --subnet that merely overlaps another vxlanpy pool
(or an automatic one) is not detected; automatic pools are not checked against the host's routes.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .digits import ascii_int
from .errors import BadRequest, Conflict, InvalidOption, NotFound
from .models import IPAddress, IPInterface, IPNetwork
from .store.base import AddressBook

log = logging.getLogger(__name__)

LOCAL_ADDRESS_SPACE = "vxlanpy-local"
GLOBAL_ADDRESS_SPACE = "vxlanpy-global"
ADDRESS_SPACES = (LOCAL_ADDRESS_SPACE, GLOBAL_ADDRESS_SPACE)

DEFAULT_POOL4 = "10.200.0.0/16:24"
DEFAULT_POOL6 = "fd78:7870::/48:64"

GATEWAY_HOLDER = "gateway"  # the holder of the gateway's address
GATEWAY_RECORD = "gateway"  # the address-table key whose holder is the pool's gateway address
CONTAINER_LABEL = "container"
SWARM_LABEL = "swarm"  # an address the swarm manager's allocator reserved
RECOVERED_LABEL = "recovered"  # a pool claim re-created by `vxlanpy recover`, until Docker's own claim shows up
AUTO_KIND = "auto"  # vxlanpy chose the address
ASKED_KIND = "ip"  # Docker asked for this address: --ip, or an --aux-address no endpoint ever holds
# RequestAddress comes right before CreateEndpoint; a reservation no endpoint holds after this long is an orphan.
ORPHAN_RESERVATION_SECONDS = 60.0
DOCKER_OPTION_PREFIX = "com.docker."  # libnetwork's own labels: accepted and ignored

HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
TOKEN = re.compile(r"^[0-9a-f]{12}(?:-[0-9]{1,12})?$")  # the time is optional: older claims had none
# RequestPool comes right before CreateNetwork; a claim no network or Docker uses after this long is an orphan.
ORPHAN_CLAIM_SECONDS = 60.0
CLAIM_PREFIX = "claim="


@dataclass(frozen=True)
class AutoPools:
    """Where automatic pools come from: `base` cut into subnets of `prefixlen` (e.g. 10.200.0.0/16 in /24s)."""

    base: IPNetwork
    prefixlen: int

    def candidates(self) -> Iterator[IPNetwork]:
        return self.base.subnets(new_prefix=self.prefixlen)

    def __str__(self) -> str:
        return f"{self.base}:{self.prefixlen}"


def parse_auto_pools(raw: str, version: int, name: str | None = None) -> AutoPools:
    """Parse "CIDR:PREFIXLEN" (VXLANPY_IPAM_POOL4=10.200.0.0/16:24, VXLANPY_IPAM_POOL6=fd78:7870::/48:64)."""
    name = name or f"VXLANPY_IPAM_POOL{version}"
    example = DEFAULT_POOL4 if version == 4 else DEFAULT_POOL6
    longest = 30 if version == 4 else 126  # every pool must hold at least two host addresses

    def invalid(reason: str) -> InvalidOption:
        return InvalidOption(f"{name}={raw!r} is not valid: {reason}; use CIDR:PREFIXLEN, e.g. {example}")

    cidr, sep, length = raw.strip().rpartition(":")
    prefixlen = ascii_int(length, 0, 128)
    if not sep or not cidr or prefixlen is None:
        raise invalid("it must end with :PREFIXLEN, the size of each automatic pool")
    try:
        base = ipaddress.ip_network(cidr)
    except ValueError:
        raise invalid(f"{cidr!r} is not a CIDR with its host bits clear") from None
    if base.version != version:
        raise invalid(f"{base} is not an IPv{version} network")
    if not base.prefixlen <= prefixlen <= longest:
        raise invalid(f"the pool size must be between /{base.prefixlen} and /{longest}")
    return AutoPools(base, prefixlen)


@dataclass(frozen=True)
class PoolGrant:
    """One RequestPool's answer: the pool, its optional --ip-range, and the claim that holds it."""

    pool: IPNetwork
    subpool: IPNetwork | None
    claim: str  # the AddressBook holder, HOST/TOKEN

    @property
    def key(self) -> str:
        return str(self.pool)

    @property
    def pool_id(self) -> str:
        parts = [str(self.pool)] + ([str(self.subpool)] if self.subpool is not None else [])
        return " ".join([*parts, CLAIM_PREFIX + self.claim])


def parse_pool_id(raw: str) -> PoolGrant:
    """The inverse of PoolGrant.pool_id; anything vxlanpy did not make is refused."""
    expected = f"expected 'CIDR [IP-RANGE] {CLAIM_PREFIX}HOST/TOKEN-SECONDS' as vxlanpy returns from RequestPool"
    parts = raw.split(" ")
    if len(parts) not in (2, 3) or not parts[-1].startswith(CLAIM_PREFIX):
        raise BadRequest(f"PoolID {raw[:120]!r} is not one vxlanpy made ({expected})")
    claim = parts[-1].removeprefix(CLAIM_PREFIX)
    host, _, token = claim.partition("/")
    if not HOST_NAME.match(host) or not TOKEN.match(token):
        raise BadRequest(f"PoolID {raw[:120]!r} has a malformed claim ({expected})")
    networks = []
    for text in parts[:-1]:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise BadRequest(f"PoolID {raw[:120]!r} holds {text[:64]!r}, which is not a CIDR ({expected})") from None
        if str(network) != text:
            raise BadRequest(f"PoolID {raw[:120]!r} holds {text[:64]!r}, which is not in canonical form")
        networks.append(network)
    pool, subpool = networks[0], networks[1] if len(networks) == 2 else None
    if subpool is not None and not inside(subpool, pool):
        raise BadRequest(f"PoolID {raw[:120]!r}: {subpool} is not inside {pool}")
    return PoolGrant(pool, subpool, claim)


def inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return (
        inner.version == outer.version
        and int(outer.network_address) <= int(inner.network_address)
        and int(inner.broadcast_address) <= int(outer.broadcast_address)
    )


def ip_from_int(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def host_range(network: IPNetwork) -> tuple[int, int]:
    """First and last host address of a network, as integers: IPv4 skips the network and broadcast
    addresses, IPv6 the subnet-router anycast address (except on /31, /32, /127 and /128)."""
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.max_prefixlen - network.prefixlen >= 2:
        first += 1
        if network.version == 4:
            last -= 1
    return first, last


def first_host(network: IPNetwork) -> IPAddress:
    """The default gateway: the first host address of the pool."""
    return ip_from_int(network.version, host_range(network)[0])


def describe_holder(holder: str) -> str:
    if holder == GATEWAY_HOLDER:
        return "the network's gateway"
    host, sep, label = holder.partition("/")
    return f"{host} ({label.partition('@')[0]})" if sep else holder


def swarm_claim(holder: str) -> str | None:
    """The pool claim (HOST/TOKEN-SECONDS) under which the swarm manager's allocator reserved an address; None
    for any other holder."""
    host, _, label = holder.partition("/")
    if not label.startswith(f"{SWARM_LABEL}-"):
        return None
    return f"{host}/{label.removeprefix(f'{SWARM_LABEL}-').partition('.')[0]}"


def _claim_seconds(claim: str) -> int:
    seconds = claim.rpartition("-")[2]
    return int(seconds) if seconds.isascii() and seconds.isdigit() else 0


def reservation_age(holder: str, host: str, now: float) -> tuple[str, float] | None:
    """(kind, seconds since it was made) of a container reservation made by `host`; None for any other holder.
    A reservation from before the kind and time were recorded is an old `ip` one (never released by a sweep)."""
    if not holder.startswith(f"{host}/{CONTAINER_LABEL}-"):
        return None
    _, _, stamp = holder.partition("@")
    kind, _, seconds = stamp.partition("-")
    if kind not in (AUTO_KIND, ASKED_KIND) or not seconds.isascii() or not seconds.isdigit():
        return ASKED_KIND, float("inf")
    return kind, now - int(seconds)


def orphan_reservations(
    reserved: Mapping[str, str],
    held: set[str],
    host: str,
    now: float,
    grace: float = ORPHAN_RESERVATION_SECONDS,
    started: float | None = None,
) -> list[tuple[str, str]]:
    """(address, holder) of the reservations in one pool that `vxlanpy gc` releases: made by this host for a
    container, at an address vxlanpy chose, and held by no endpoint (`held`), either at least `grace` seconds ago
    or in a second before the plugin `started` (no request of a process that ended can still make an endpoint)."""
    orphans = []
    for address, holder in sorted(reserved.items()):
        age = reservation_age(holder, host, now)
        if age is None or age[0] != AUTO_KIND or address in held:
            continue
        before_start = started is not None and now - age[1] < int(started)
        if age[1] >= grace or before_start:
            orphans.append((address, holder))
    return orphans


def claim_age(claim: str, host: str, now: float) -> float | None:
    """Seconds since `host` made the pool claim; inf for a claim from before claims were timed; None for
    anything that is not a claim of `host` (another host's, a recovery marker)."""
    owner, _, token = claim.partition("/")
    if owner != host or not TOKEN.match(token):
        return None
    _, sep, seconds = token.partition("-")
    return now - int(seconds) if sep else float("inf")


def orphan_pool_claims(
    claims: Mapping[str, set[str]],
    in_use: set[str],
    host: str,
    now: float,
    grace: float = ORPHAN_CLAIM_SECONDS,
    started: float | None = None,
) -> list[tuple[str, str]]:
    """(pool, claim) of the claims `vxlanpy gc` and start-up release: made by this host, on a pool that nothing
    in `in_use` (the pools of the store's networks and of Docker's networks) covers, at least `grace` seconds ago
    or in a second before the plugin `started` (no request of a process that ended can still create a network)."""
    orphans = []
    for pool, holders in sorted(claims.items()):
        if pool in in_use:
            continue
        for claim in sorted(holders):
            age = claim_age(claim, host, now)
            if age is None:
                continue
            if age >= grace or (started is not None and now - age < int(started)):
                orphans.append((pool, claim))
    return orphans


class Ipam:
    """Pools and addresses for libnetwork's remote IPAM calls. Thread-safe: every record change is one atomic
    AddressBook call, and a lost race is retried with the next candidate."""

    def __init__(
        self,
        book: AddressBook,
        host: str,
        pool4: AutoPools | str = DEFAULT_POOL4,
        pool6: AutoPools | str = DEFAULT_POOL6,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not HOST_NAME.match(host):
            raise InvalidOption(
                f"host name {host[:80]!r} cannot name IPAM reservations; use letters, digits, '.', '_' and '-' "
                "(set VXLANPY_HOST)"
            )
        self.book = book
        self.host = host
        self.clock = clock
        self.pool4 = pool4 if isinstance(pool4, AutoPools) else parse_auto_pools(pool4, 4)
        self.pool6 = pool6 if isinstance(pool6, AutoPools) else parse_auto_pools(pool6, 6)
        if self.pool4.base.version != 4 or self.pool6.base.version != 6:
            raise InvalidOption("pool4 must be IPv4 and pool6 IPv6")

    def _claim(self) -> str:
        """A pool claim no other request shares, with its time: HOST/TOKEN-SECONDS."""
        return f"{self._holder()}-{int(self.clock())}"

    def _holder(self, label: str | None = None) -> str:
        """A holder no other request shares: HOST/TOKEN or HOST/LABEL-TOKEN."""
        token = secrets.token_hex(6)
        return f"{self.host}/{label}-{token}" if label else f"{self.host}/{token}"

    # -- pools ----------------------------------------------------------------------------------------------

    def request_pool(
        self,
        address_space: str,
        pool: IPNetwork | None,
        subpool: IPNetwork | None,
        v6: bool | None,
        options: Mapping[str, str],
    ) -> PoolGrant:
        """v6 None: not said; an explicit pool then decides, and an automatic one is IPv4."""
        if address_space not in ADDRESS_SPACES:
            raise InvalidOption(
                f"address space {address_space[:64]!r} is not vxlanpy's; it serves {' and '.join(ADDRESS_SPACES)}"
            )
        unknown = sorted(key for key in options if not key.startswith(DOCKER_OPTION_PREFIX))
        if unknown:
            raise InvalidOption(
                f"unknown IPAM option {unknown[0][:64]!r}: vxlanpy's IPAM driver takes no --ipam-opt options"
            )
        claim = self._claim()
        if pool is None:
            if subpool is not None:
                raise InvalidOption(f"--ip-range {subpool} needs a --subnet that contains it")
            grant = self._automatic_pool(self.pool6 if v6 else self.pool4, claim)
        else:
            if v6 is not None and pool.version != (6 if v6 else 4):
                raise BadRequest(f"pool {pool} is IPv{pool.version} but the request is for IPv{6 if v6 else 4}")
            if pool.prefixlen > pool.max_prefixlen - 1:
                raise InvalidOption(f"--subnet {pool} is too small: it has no room for a gateway and a container")
            if subpool is not None and not inside(subpool, pool):
                raise InvalidOption(f"--ip-range {subpool} is not inside --subnet {pool}")
            grant = PoolGrant(pool, subpool, claim)
            self.book.claim_pool(grant.key, claim, exclusive=False)
        log.debug("pool %s claimed by %s", grant.pool, claim)
        return grant

    def _automatic_pool(self, source: AutoPools, claim: str) -> PoolGrant:
        for candidate in source.candidates():
            if self.book.claim_pool(str(candidate), claim, exclusive=True):
                return PoolGrant(candidate, None, claim)
        raise Conflict(
            f"no free automatic pool left in {source.base} (/{source.prefixlen} each); remove unused networks, "
            f"give --subnet explicitly, or widen VXLANPY_IPAM_POOL{source.base.version}"
        )

    def release_pool(self, pool_id: str) -> None:
        grant = parse_pool_id(pool_id)
        holders = self.book.pool_holders(grant.key)
        if grant.claim not in holders:
            self._adopt(grant, holders)  # a recovered pool: its marker goes with Docker's claim
        self.book.release_pool(grant.key, grant.claim)
        log.debug("pool %s released by %s", grant.pool, grant.claim)

    # -- recovery of a lost store -----------------------------------------------------------------------------

    def _marker(self, network_id: str) -> str:
        return f"{self.host}/{RECOVERED_LABEL}-{network_id[:12]}"

    def _adopt(self, grant: PoolGrant, holders: set[str]) -> bool:
        """Docker's claim on a pool that `recover` re-created (the store lost it): it replaces one recovery
        marker, so that Docker's ReleasePool forgets the pool as usual."""
        marker = next((h for h in sorted(holders) if h.startswith(f"{self.host}/{RECOVERED_LABEL}-")), None)
        if marker is None or grant.claim.partition("/")[0] != self.host:
            return False
        self.book.claim_pool(grant.key, grant.claim, exclusive=False)
        self.book.release_pool(grant.key, marker)
        log.warning("pool %s: Docker's claim %s adopted (its records were recovered)", grant.pool, grant.claim)
        return True

    def recover_pool(
        self, network_id: str, pool: IPNetwork, gateway: IPAddress | None, addresses: list[IPAddress]
    ) -> list[str]:
        """Re-create the records of one pool of a network Docker still has, after the store lost them: a claim
        that Docker's own PoolID takes over at its next call, the gateway and the addresses of its endpoints.
        Returns what was reserved."""
        key = str(pool)
        done = []
        holders = self.book.pool_holders(key)
        if self._marker(network_id) not in holders:
            self.book.claim_pool(key, self._marker(network_id), exclusive=False)
            done.append(f"pool {pool}")
        if gateway is not None and GATEWAY_RECORD not in self.book.reserved_addresses(key):
            self.book.reserve_address(key, GATEWAY_RECORD, str(gateway))
            self.book.reserve_address(key, str(gateway), GATEWAY_HOLDER)
            done.append(f"gateway {gateway}")
        for address in addresses:
            holder = f"{self._holder(CONTAINER_LABEL)}@{AUTO_KIND}-{int(self.clock())}"
            if self.book.reserve_address(key, str(address), holder) is None:
                done.append(str(address))
        return done

    def _claimed(self, pool_id: str) -> PoolGrant:
        grant = parse_pool_id(pool_id)
        holders = self.book.pool_holders(grant.key)
        if grant.claim not in holders and self._adopt(grant, holders):
            return grant
        if grant.claim not in holders:
            raise NotFound(
                f"pool {grant.pool} is not allocated to this network any more (vxlanpy's IPAM state was lost or "
                "the pool was released); remove the network with `docker network rm` and create it again"
            )
        return grant

    # -- addresses ------------------------------------------------------------------------------------------

    def request_address(
        self, pool_id: str, address: IPAddress | None, gateway: bool = False, swarm: bool = False
    ) -> IPInterface:
        """`swarm`: the request comes from the swarm manager's allocator (see the module's doc)."""
        grant = self._claimed(pool_id)
        if address is not None:
            self._check_in_pool(grant, address, "--gateway" if gateway else "address")
        chosen = self._gateway(grant, address) if gateway else self._container_address(grant, address, swarm)
        return ipaddress.ip_interface(f"{chosen}/{grant.pool.prefixlen}")

    def _check_in_pool(self, grant: PoolGrant, address: IPAddress, what: str) -> None:
        pool = grant.pool
        if address.version != pool.version:
            raise InvalidOption(f"{what} {address} is IPv{address.version} but the pool {pool} is IPv{pool.version}")
        if address not in pool:
            raise InvalidOption(f"{what} {address} is outside the pool {pool}; choose an address inside it")
        first, last = host_range(pool)
        if not first <= int(address) <= last:
            kind = "network" if int(address) < first else "broadcast"
            raise InvalidOption(f"{what} {address} is the {kind} address of {pool}; choose a host address")

    def _gateway(self, grant: PoolGrant, requested: IPAddress | None) -> IPAddress:
        recorded = self.book.reserved_addresses(grant.key).get(GATEWAY_RECORD)
        candidate = requested
        if candidate is None:
            candidate = ipaddress.ip_address(recorded) if recorded else first_host(grant.pool)
        winner = self.book.reserve_address(grant.key, GATEWAY_RECORD, str(candidate))
        recorded_now = recorded is None and winner is None
        if winner is not None:
            if requested is not None:
                raise Conflict(
                    f"--gateway {requested} differs from the gateway {winner} already recorded for {grant.pool} "
                    f"(hosts sharing a subnet share its gateway); use --gateway {winner} or omit --gateway"
                )
            candidate = ipaddress.ip_address(winner)  # another host fixed it in the meantime
        holder = self.book.reserve_address(grant.key, str(candidate), GATEWAY_HOLDER)
        if holder is not None:
            if recorded_now:  # we recorded it just now: undo, so another --gateway can still be chosen
                self.book.release_address(grant.key, GATEWAY_RECORD)
            raise Conflict(
                f"the gateway {candidate} of {grant.pool} is already in use by {describe_holder(holder)}; "
                "choose another --gateway"
            )
        return candidate

    def _container_address(self, grant: PoolGrant, requested: IPAddress | None, swarm: bool = False) -> IPAddress:
        kind = AUTO_KIND if requested is None else ASKED_KIND
        if swarm:
            claim = grant.claim.partition("/")[2]
            holder = f"{self.host}/{SWARM_LABEL}-{claim}.{secrets.token_hex(6)}@{kind}-{int(self.clock())}"
        else:
            holder = f"{self._holder(CONTAINER_LABEL)}@{kind}-{int(self.clock())}"
        if requested is not None:
            winner = self.book.reserve_address(grant.key, str(requested), holder)
            if winner is not None and self._swarm_grants(grant, winner, swarm):
                if swarm:  # an earlier run of the allocator reserved it: this one releases it from now on
                    self.book.release_address(grant.key, str(requested))
                    self.book.reserve_address(grant.key, str(requested), holder)
                return requested
            if winner is not None:
                raise Conflict(
                    f"{requested} is already in use by {describe_holder(winner)}; "
                    "choose another --ip or omit it to get a free address"
                )
            return requested
        reserved = self.book.reserved_addresses(grant.key)
        taken = set(reserved) | ({reserved[GATEWAY_RECORD]} if GATEWAY_RECORD in reserved else set())
        for candidate in self._candidates(grant):
            if str(candidate) in taken:
                continue
            winner = self.book.reserve_address(grant.key, str(candidate), holder)
            if winner is None:
                return candidate
            taken.add(str(candidate))  # lost a race with another request: try the next one
        first, last = self._candidate_range(grant)
        where = f"--ip-range {grant.subpool} of {grant.pool}" if grant.subpool is not None else str(grant.pool)
        raise Conflict(
            f"no free address left in {where} ({last - first + 1 if last >= first else 0} host addresses, all in "
            "use); remove unused containers or use a larger --subnet or --ip-range"
        )

    @staticmethod
    def _swarm_grants(grant: PoolGrant, holder: str, swarm: bool) -> bool:
        """Whether an address `holder` has is granted again: to a node, when the swarm's allocator holds it; to
        the allocator, when an earlier run of it does (an older claim), never twice to one run."""
        claim = swarm_claim(holder)
        if claim is None:
            return False
        return not swarm or (claim != grant.claim and _claim_seconds(claim) <= _claim_seconds(grant.claim))

    def _candidate_range(self, grant: PoolGrant) -> tuple[int, int]:
        first, last = host_range(grant.pool)
        if grant.subpool is not None:
            first = max(first, int(grant.subpool.network_address))
            last = min(last, int(grant.subpool.broadcast_address))
        return first, last

    def _candidates(self, grant: PoolGrant) -> Iterator[IPAddress]:
        first, last = self._candidate_range(grant)
        for value in range(first, last + 1):
            yield ip_from_int(grant.pool.version, value)

    def release_address(self, pool_id: str, address: IPAddress) -> None:
        """Idempotent. The gateway stays reserved until the pool is released; an address another host holds
        now (this host released it before and dockerd repeats itself) is left alone."""
        grant = parse_pool_id(pool_id)
        if address.version != grant.pool.version or address not in grant.pool:
            raise InvalidOption(f"address {address} is outside the pool {grant.pool}")
        holder = self.book.reserved_addresses(grant.key).get(str(address))
        if holder is None or holder == GATEWAY_HOLDER:
            return
        claim = swarm_claim(holder)
        if claim is not None:  # the allocator's: only it releases (a node's release leaves it be)
            if claim == grant.claim:
                self.book.release_address(grant.key, str(address))
            return
        if holder.partition("/")[0] != self.host:
            log.warning("not releasing %s in %s: it is held by %s, not by this host", address, grant.pool, holder)
            return
        self.book.release_address(grant.key, str(address))
