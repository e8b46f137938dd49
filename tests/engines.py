"""The Docker engines and Compose versions the suites run against, fetched from Debian's own package suites.

20.10 is the machine's own docker.io (Debian bookworm, installed by scripts/test).  The newer engines are
Debian's trixie and sid packages, downloaded with a private sources list and a private apt state and unpacked
with `dpkg -x` into CACHE: nothing is installed system-wide and the machine's apt sources are never touched.
Their dockerd and containerd run on bookworm; sid's runc needs a newer glibc, so every engine uses bookworm's
runc, and bookworm's tini-static as docker-init.  `bin_dir(NAME)` is a directory of links to one engine's
binaries, to put first on dockerd's PATH.

    python -m tests.engines fetch 26.1 28.5 compose-v2   # download and unpack (cached), print the bin dirs
    python -m tests.engines run 28.5 -- CMD ARGS...      # CMD inside a network namespace with that dockerd

`run` gives the engine a network namespace of its own (lo, and a veth eth0 holding the default route, its
peer inside too, so nothing leaves the namespace) and a private mount namespace in which /run/docker is its own: the vxlanpy that
CMD starts on /run/docker/plugins/vxlanpy.sock is found by that dockerd alone.  CMD runs in both namespaces
with DOCKER_HOST pointing at the engine, and VXLANPY_TEST_ENGINE naming it.

The multi-host and managed-plugin harnesses start their dockerds with the engine VXLANPY_TEST_ENGINE names
(unset: the system's), and tests/plugin's Compose tests run under each docker-compose VXLANPY_TEST_COMPOSE lists
(`v1`, the system's 1.29, `v2`, or `v1,v2`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("VXLANPY_ENGINE_CACHE", "/var/cache/vxlanpy-engines"))
DEBIAN_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
ENGINE_ENV = "VXLANPY_TEST_ENGINE"
COMPOSE_ENV = "VXLANPY_TEST_COMPOSE"
SYSTEM_ENGINE = "20.10"
# Bookworm's own, for every engine (see the module docstring).
SYSTEM_RUNC = Path("/usr/sbin/runc")
SYSTEM_TINI = Path("/usr/bin/tini-static")


@dataclass(frozen=True)
class Release:
    """Debian packages (name -> exact version) of one suite, and the files of them that a bin dir links."""

    suite: str
    packages: dict[str, str]
    binaries: tuple[str, ...]


# The one place where the tested versions are pinned.
ENGINES: dict[str, Release] = {
    "26.1": Release(
        "trixie",
        {"docker.io": "26.1.5+dfsg1-9+deb13u1+b1", "containerd": "1.7.24~ds1-6+deb13u1"},
        ("dockerd", "docker-proxy", "containerd", "containerd-shim-runc-v2", "ctr"),
    ),
    "28.5": Release(
        "sid",
        {"docker.io": "28.5.2+dfsg4-5", "containerd": "2.1.9+ds1-5"},
        ("dockerd", "docker-proxy", "containerd", "containerd-shim-runc-v2", "ctr"),
    ),
}
COMPOSE_V2 = Release("sid", {"docker-compose": "2.40.3-3"}, ("docker-compose",))
RELEASES: dict[str, Release] = {**ENGINES, "compose-v2": COMPOSE_V2}


class FetchError(RuntimeError):
    pass


def _apt_options(state: Path) -> list[str]:
    return [
        "-o", f"Dir::Etc::SourceList={state / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={state / 'lists'}",
        "-o", f"Dir::Cache={state / 'cache'}",
        "-o", "Dir::State::status=/dev/null",
        "-o", "Debug::NoLocking=1",
        "-q",
    ]  # fmt: skip


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise FetchError(f"{what} failed ({result.returncode}):\n{(result.stderr or result.stdout).strip()[-2000:]}")


def _apt_state(suite: str) -> Path:
    """A private apt state for `suite` whose package lists are fresh for this run (one update per day)."""
    state = CACHE / "apt" / suite
    for sub in ("lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text(f"deb [signed-by={KEYRING}] {DEBIAN_MIRROR} {suite} main\n")
    return state


def _update(state: Path) -> None:
    _run(["apt-get", *_apt_options(state), "update"], f"apt-get update of the private {state.name} lists")


def _download(state: Path, packages: dict[str, str], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}={version}" for name, version in packages.items()]
    try:
        _run(["apt-get", *_apt_options(state), "download", *wanted], "apt-get download", cwd=into)
    except FetchError:
        _update(state)  # the lists may be missing or stale: refresh them once
        try:
            _run(["apt-get", *_apt_options(state), "download", *wanted], "apt-get download", cwd=into)
        except FetchError as exc:
            raise FetchError(
                f"Debian {state.name} no longer has {', '.join(wanted)} (or the registry is unreachable): update "
                f"the pinned versions in tests/engines.py to what `apt-cache policy` shows there.\n{exc}"
            ) from None


def bin_dir(name: str) -> Path:
    """The directory of links to release `name`'s binaries, downloading and unpacking it when not cached."""
    if name not in RELEASES:
        raise FetchError(f"unknown engine or tool {name!r}: one of {', '.join(RELEASES)}")
    release = RELEASES[name]
    tag = "_".join(f"{pkg}-{version}" for pkg, version in sorted(release.packages.items())).replace("~", "-")
    root = CACHE / "releases" / tag
    bindir = root / "bin"
    if (root / ".complete").exists():
        return bindir
    shutil.rmtree(root, ignore_errors=True)
    debs = root / "debs"
    _download(_apt_state(release.suite), release.packages, debs)
    unpacked = root / "root"
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")
    bindir.mkdir(parents=True)
    for binary in release.binaries:
        found = [p for d in ("usr/bin", "usr/sbin") if (p := unpacked / d / binary).exists()]
        if not found:
            raise FetchError(f"{binary} is not in {', '.join(release.packages)} as unpacked in {unpacked}")
        (bindir / binary).symlink_to(found[0])
    if name in ENGINES:
        for link, target in (("runc", SYSTEM_RUNC), ("docker-init", SYSTEM_TINI)):
            if not target.exists():
                raise FetchError(f"{target} is missing (apt-get install runc tini)")
            (bindir / link).symlink_to(target)
    (root / ".complete").write_text("")
    return bindir


def engine_name() -> str:
    """The engine the suites are asked to use: VXLANPY_TEST_ENGINE, or the system's."""
    name = os.environ.get(ENGINE_ENV, "") or SYSTEM_ENGINE
    if name != SYSTEM_ENGINE and name not in ENGINES:
        raise FetchError(f"{ENGINE_ENV}={name!r} is not an engine tests/engines.py knows: {', '.join(ENGINES)}")
    return name


def engine_major() -> int:
    """The major version of the engine VXLANPY_TEST_ENGINE names (20 for the system's)."""
    return int(engine_name().split(".")[0])


def dockerd_environment() -> dict[str, str]:
    """The environment for a test dockerd: the asked-for engine's binaries first on PATH."""
    env = dict(os.environ)
    name = engine_name()
    if name != SYSTEM_ENGINE:
        env["PATH"] = f"{bin_dir(name)}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


def compose_versions() -> list[str]:
    """The Compose versions asked for: VXLANPY_TEST_COMPOSE, a comma-separated list of v1 and v2 (default v1)."""
    versions = [v.strip() for v in (os.environ.get(COMPOSE_ENV, "") or "v1").split(",") if v.strip()]
    unknown = [v for v in versions if v not in ("v1", "v2")]
    if unknown or not versions:
        raise FetchError(f"{COMPOSE_ENV}={os.environ.get(COMPOSE_ENV)!r}: use v1, v2 or v1,v2")
    return versions


def compose_command(version: str) -> list[str]:
    """docker-compose v1 (the system's 1.29) or v2 (sid's standalone binary, the `docker compose` plugin's)."""
    if version == "v1":
        return ["docker-compose", "--no-ansi"]
    if version == "v2":
        return [str(bin_dir("compose-v2") / "docker-compose"), "--ansi", "never"]
    raise FetchError(f"unknown Compose version {version!r}: v1 or v2")


# --------------------------------------------------------------------------------------------- run


def _ip(*argv: str) -> None:
    _run(["ip", *argv], "ip " + " ".join(argv))


def add_dead_end_uplink(ip_options: list[str]) -> None:
    """eth0 with a documentation address and the default route, on a veth whose peer stays beside it (a kernel may
    lack the dummy driver): vxlanpy finds its underlay, and nothing leaves the namespace through it.
    `ip_options`: ["-n", NETNS], or [] for the current namespace."""
    _ip(*ip_options, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    _ip(*ip_options, "addr", "add", "192.0.2.1/24", "dev", "eth0")
    _ip(*ip_options, "link", "set", "eth0p", "up")
    _ip(*ip_options, "link", "set", "eth0", "up")
    _ip(*ip_options, "route", "add", "default", "via", "192.0.2.254")


def run_in_engine(name: str, command: list[str]) -> int:
    """Run `command` in a network namespace of its own, next to engine `name`'s dockerd (see the docstring)."""
    from tests.multihost.cluster import Dockerd  # the multi-host harness's dockerd, in a private mount namespace

    os.environ[ENGINE_ENV] = name
    engine_name()  # refuse an unknown name before building anything
    netns = f"vxeng-{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix=f"{netns}-"))
    dockerd = Dockerd(netns, workdir)
    # Docker's default exec root, as on a real host (sandbox keys under /run/docker/netns, where `vxlanpy
    # attach` looks for them): /run/docker is the private run dir in dockerd's mount namespace.
    dockerd.exec_root = Path("/run/docker")
    dockerd.default_bridge = True
    try:
        _ip("netns", "add", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        add_dead_end_uplink(["-n", netns])
        dockerd.start(timeout=120)
        version = dockerd.client.version().get("Version", "?")
        print(f"tests.engines: dockerd {version} up in {netns} (log: {dockerd.log_path})", file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = f"unix://{dockerd.socket_path}"
        env[ENGINE_ENV] = name
        argv = ["nsenter", f"--net=/run/netns/{netns}", f"--mount=/proc/{dockerd.pid}/ns/mnt", f"--wd={os.getcwd()}"]
        argv += ["--", *command]
        return subprocess.run(argv, env=env, check=False).returncode
    finally:
        dockerd.stop()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        if os.environ.get("VXLANPY_KEEP_ENGINE_LOGS"):
            print(f"tests.engines: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    usage = "usage: python -m tests.engines fetch NAME... | run ENGINE -- COMMAND..."
    if len(argv) >= 2 and argv[0] == "fetch":
        try:
            for name in argv[1:]:
                print(f"{name}: {bin_dir(name)}")
        except FetchError as exc:
            print(f"tests.engines: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(argv) >= 4 and argv[0] == "run" and argv[2] == "--":
        try:
            return run_in_engine(argv[1], argv[3:])
        except FetchError as exc:
            print(f"tests.engines: {exc}", file=sys.stderr)
            return 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
