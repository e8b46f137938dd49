"""scripts/vm-run: one command as root in a QEMU guest on a stock Debian kernel, this machine's filesystem its root.

vxlanpy's kernel code must work on the kernels users run (Debian's, with GRE, gretap, geneve, WireGuard and IPsec
built), not only on the machine it is developed on.  virtme-ng boots Debian's own kernel package with the host's
root filesystem shared read-only (9p) and writable overlays over /etc, /usr, /var, /tmp ...; the command runs as
root in the checkout's directory, and its exit status is vm-run's.

    python -m tests.vm [--kernel bookworm|trixie] [--accel auto|kvm|tcg] [--dockerd] [--private-tmp] [--] COMMAND...

What it fetches, into CACHE (VXLANPY_VM_CACHE, default /var/lib/vxlanpy-vm: not under /var/cache, which the
guest covers with a tmpfs, because the guest loads its kernel modules from there):
  - virtme-ng (VIRTME_NG) in a venv of its own;
  - Debian's linux-image-amd64 of the chosen suite, resolved to its linux-image-VERSION package, downloaded with
    tests/engines.py's private apt state (nothing is installed system-wide) and unpacked with `dpkg-deb -x`; the
    resolution is refreshed weekly, and a cached kernel is used when the mirror cannot be reached;
  - the KVM verdict: whether a KVM guest boots here (it hangs on some nested hosts), probed once per host kernel;
    without KVM the guest runs under QEMU's software emulation (TCG), about 20-30 s to boot.
and the host packages it needs: qemu-system-x86, udev (the guest's init finds its console ports through it),
python3-venv and kmod.

Exit status: the command's; 125 when the guest could not be set up or did not boot, or died before the command
ended (the reason and the end of the guest's console are printed: a guest that cannot boot fails, never skips).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from tests.engines import FetchError, _apt_options, _apt_state, _run, _update, add_dead_end_uplink

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("VXLANPY_VM_CACHE", "/var/lib/vxlanpy-vm"))
VIRTME_NG = "virtme-ng==1.42"
KERNELS = {"bookworm": "bookworm", "trixie": "trixie"}  # --kernel NAME -> the Debian suite of its linux-image-amd64
KERNEL_REFRESH_SECONDS = 7 * 24 * 3600
KVM_PROBE_SECONDS = 90
VM_FAILURE = 125
# Drivers udev would load for the emulated PC's hardware that no test uses; under TCG they cost ~15 s of boot
# (kvm_amd alone 10 s).  libkmod honours modprobe.blacklist= on the kernel command line.
UNUSED_MODULES = (
    "kvm,kvm_amd,kvm_intel,ahci,libahci,sr_mod,cdrom,sg,iTCO_wdt,iTCO_vendor_support,i6300esb,lpc_ich,i2c_i801,"
    "pcspkr,powernow_k8,psmouse,serio_raw,evdev,joydev,button,ghash_clmulni_intel,aesni_intel,cryptd,"
    "crc32_pclmul,crc32c_intel"
)
# Host packages: the file that shows each is there.
HOST_PACKAGES = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "udev": "/lib/systemd/systemd-udevd",
    "kmod": "/sbin/depmod",
    "python3-venv": f"{sysconfig.get_paths()['stdlib']}/ensurepip/__init__.py",  # Debian ships it apart
}
# In the guest: where Docker keeps its layers must not be an overlay (overlay2 cannot stack on one).
GUEST_TMPFS = ("/var/lib/docker", "/var/lib/containerd")
GUEST_MODULES = ("vxlan", "bridge", "br_netfilter")  # what scripts/test loads on the host
GUEST_DOCKERD_SECONDS = 120
# The guest's flags, between `guest STATUS_DIR` and `--` on its command line.
GUEST_FLAGS = ("--dockerd", "--private-tmp")


class VmError(RuntimeError):
    """The guest could not be set up or did not boot: vm-run fails with this reason."""


def say(message: str) -> None:
    print(f"vm-run: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- host side


def ensure_host_packages() -> None:
    missing = [package for package, marker in HOST_PACKAGES.items() if not Path(marker).exists()]
    if not missing:
        return
    say(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Keep the packages' scripts from starting services (udev); a policy already there is left alone.
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = not policy.exists()
    if created_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
            if subprocess.run(install, env=env, check=False).returncode != 0:
                raise VmError(f"could not install {' '.join(missing)}")
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)


def ensure_virtme_ng() -> Path:
    """The bin directory of the venv holding virtme-ng (vng calls virtme-run from its PATH)."""
    venv = CACHE / VIRTME_NG.replace("==", "-")
    done = venv / ".complete"
    if not done.exists():
        say(f"installing {VIRTME_NG} into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", str(venv)], f"python -m venv {venv}")
            _run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", VIRTME_NG], "pip")
        except FetchError as exc:
            raise VmError(str(exc)) from None
        done.write_text("")
    return venv / "bin"


def _download_newest(state: Path, package: str, into: Path) -> None:
    """`apt-get download PACKAGE` (the candidate of the private lists), refreshing the lists once if that fails."""
    argv = ["apt-get", *_apt_options(state), "download", package]
    try:
        _run(argv, f"apt-get download {package}", cwd=into)
    except FetchError:
        _update(state)
        _run(argv, f"apt-get download {package}", cwd=into)


def _resolve_kernel_package(suite: str) -> tuple[str, str]:
    """(name, version) of the linux-image package that `suite`'s linux-image-amd64 depends on."""
    state = _apt_state(suite)
    with tempfile.TemporaryDirectory(prefix="vxlanpy-vm-") as scratch:
        _download_newest(state, "linux-image-amd64", Path(scratch))
        debs = list(Path(scratch).glob("linux-image-amd64_*.deb"))
        if not debs:
            raise FetchError(f"apt-get download gave no linux-image-amd64 package of {suite}")
        depends = subprocess.run(
            ["dpkg-deb", "-f", str(debs[0]), "Depends"], capture_output=True, text=True, check=True
        ).stdout
    return kernel_package(depends)


def kernel_package(depends: str) -> tuple[str, str]:
    """(name, version) of the kernel package in linux-image-amd64's Depends: "linux-image-6.1.0-50-amd64 (= 6.1.176-1)"."""
    first = depends.split(",")[0].strip()
    name, _, version = first.partition(" (= ")
    if not name.startswith("linux-image-") or not version.endswith(")"):
        raise FetchError(f"cannot read the kernel package from linux-image-amd64's Depends: {depends!r}")
    return name, version.rstrip(")")


def _unpacked_image(package_dir: Path) -> Path | None:
    images = sorted((package_dir / "root" / "boot").glob("vmlinuz-*")) if (package_dir / ".complete").exists() else []
    return images[0] if images else None


def kernel_image(kernel: str) -> Path:
    """The vmlinuz of `kernel`'s Debian package, unpacked (with its modules beside it) in CACHE/kernels."""
    suite = KERNELS[kernel]
    home = CACHE / "kernels" / suite
    current = home / "current"
    cached = _unpacked_image(current) if current.exists() else None
    if cached is not None and time.time() - current.lstat().st_mtime < KERNEL_REFRESH_SECONDS:
        return cached
    try:
        name, version = _resolve_kernel_package(suite)
        package_dir = home / f"{name}_{version}"
        if _unpacked_image(package_dir) is None:
            say(f"fetching {name} {version} from Debian {suite}")
            shutil.rmtree(package_dir, ignore_errors=True)
            debs = package_dir / "debs"
            debs.mkdir(parents=True)
            _run(["apt-get", *_apt_options(_apt_state(suite)), "download", f"{name}={version}"], "download", debs)
            for deb in debs.glob("*.deb"):
                _run(["dpkg-deb", "-x", str(deb), str(package_dir / "root")], f"dpkg-deb -x {deb.name}")
                deb.unlink()
            (package_dir / ".complete").write_text("")
        link = home / "current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(package_dir.name)
        link.rename(current)  # atomically, and its mtime says when it was resolved
    except (FetchError, subprocess.CalledProcessError) as exc:
        if cached is None:
            raise VmError(f"cannot fetch Debian {suite}'s kernel: {exc}") from None
        say(f"WARNING: cannot refresh Debian {suite}'s kernel, using the cached one ({exc})")
        return cached
    image = _unpacked_image(current)
    if image is None:
        raise VmError(f"no boot/vmlinuz-* in {current.resolve()}")
    return image


def vng_argv(bin_dir: Path, image: Path, kvm: bool, memory: str, exec_line: str, rwdir: Path) -> list[str]:
    argv = [str(bin_dir / "vng"), "--verbose", "-r", str(image), "--memory", memory, "--cpus", "1"]
    # apparmor=0: Debian's kernel enables AppArmor, and dockerd then wants apparmor_parser, which the host lacks.
    argv += ["--append", f"modprobe.blacklist={UNUSED_MODULES} apparmor=0", "--rwdir", str(rwdir)]
    if not kvm:
        argv.append("--disable-kvm")
    return [*argv, "--exec", exec_line]


def run_guest(argv: list[str], bin_dir: Path, console: Path, timeout: float) -> int | None:
    """Run vng (the guest's console to `console`); its exit status, or None when it ran past `timeout`."""
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
    with console.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # vng, virtme-run and qemu: the session started here
            process.wait()
            return None


def console_tail(console: Path, lines: int = 40) -> str:
    try:
        # The serial console pads its lines with blanks: keep what has text.
        kept = [line.strip() for line in console.read_text(errors="replace").splitlines() if line.strip()]
        return "\n".join(kept[-lines:])
    except FileNotFoundError:
        return "(no console output)"


def use_kvm(bin_dir: Path, image: Path, accel: str) -> bool:
    """Whether to boot with KVM: asked for, or `auto` and a KVM guest was seen to boot here (probed once)."""
    if accel != "auto":
        return accel == "kvm"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    verdict_file = CACHE / f"kvm-verdict-{os.uname().release}"
    if verdict_file.exists():
        return verdict_file.read_text().startswith("kvm")
    say(f"probing whether a KVM guest boots here (at most {KVM_PROBE_SECONDS} s, once)")
    with tempfile.TemporaryDirectory(prefix="vxlanpy-vm-probe-") as scratch:
        console = Path(scratch) / "console.log"
        argv = vng_argv(bin_dir, image, True, "512M", "true", Path(scratch))
        status = run_guest(argv, bin_dir, console, KVM_PROBE_SECONDS)
        booted = status == 0
        reason = "booted" if booted else f"did not boot ({'hung' if status is None else f'exit {status}'})"
        tail = "" if booted else "\n" + console_tail(console, 10)
    verdict_file.write_text(f"{'kvm' if booted else 'tcg'}: a KVM guest {reason}{tail}\n")
    say(f"a KVM guest {reason}: using {'KVM' if booted else 'TCG (software emulation)'}")
    return booted


def guest_flags(dockerd: bool, private_tmp: bool) -> list[str]:
    return [flag for flag, wanted in zip(GUEST_FLAGS, (dockerd, private_tmp), strict=True) if wanted]


def run(
    kernel: str,
    accel: str,
    memory: str,
    timeout: float,
    dockerd: bool,
    command: list[str],
    private_tmp: bool = False,
) -> int:
    if os.geteuid() != 0:
        raise VmError("must run as root")
    ensure_host_packages()
    CACHE.mkdir(parents=True, exist_ok=True)
    bin_dir = ensure_virtme_ng()
    image = kernel_image(kernel)
    kvm = use_kvm(bin_dir, image, accel)
    # Not under /tmp: with --private-tmp the guest covers /tmp, and the guest writes its status here.
    (CACHE / "runs").mkdir(exist_ok=True)
    status_dir = Path(tempfile.mkdtemp(prefix="vxlanpy-vm-", dir=CACHE / "runs"))
    try:
        guest = [sys.executable, "-m", "tests.vm", "guest", str(status_dir), *guest_flags(dockerd, private_tmp)]
        # vng's --exec takes a command line for the guest's shell: the argv, quoted.
        exec_line = shlex.join([*guest, "--", *command])
        console = status_dir / "console.log"
        say(f"booting {image.name} ({kernel}) with {'KVM' if kvm else 'TCG'}: {shlex.join(command)}")
        started = time.monotonic()
        started_wall = time.time()
        vng_status = run_guest(vng_argv(bin_dir, image, kvm, memory, exec_line, status_dir), bin_dir, console, timeout)
        booted, finished = status_dir / "booted", status_dir / "status"
        if not booted.exists():
            ended = "ran past the time limit" if vng_status is None else f"ended with exit status {vng_status}"
            raise VmError(f"the guest did not boot (virtme-ng {ended}); its console:\n{console_tail(console)}")
        say(
            f"the guest was up {booted.stat().st_mtime - started_wall:.0f} s after the start "
            f"(its uptime then: {booted.read_text().strip()} s); it ran {time.monotonic() - started:.0f} s in all"
        )
        if not finished.exists():
            ended = "ran past the time limit" if vng_status is None else f"ended with exit status {vng_status}"
            raise VmError(f"the guest died before the command ended ({ended}); its console:\n{console_tail(console)}")
        return int(finished.read_text())
    finally:
        if os.environ.get("VXLANPY_KEEP_VM_LOGS"):
            say(f"kept {status_dir}")
        else:
            shutil.rmtree(status_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- guest side


def say_in_guest(message: str) -> None:
    print(f"vm-run (guest): {message}", flush=True)  # the guest's stderr goes to the console log


def _start_dockerd(log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(["dockerd"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + GUEST_DOCKERD_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0:
            return process
        time.sleep(1)
    process.kill()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise VmError(f"dockerd did not come up in the guest within {GUEST_DOCKERD_SECONDS} s; its log:\n{tail}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def guest_main(status_dir: Path, dockerd: bool, command: list[str], private_tmp: bool = False) -> int:
    """In the guest: note the boot, make what tests write writable, start dockerd if asked, run the command."""
    (status_dir / "booted").write_text(Path("/proc/uptime").read_text().split()[0])
    if private_tmp:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", "/tmp"], check=True)
    for path in GUEST_TMPFS:
        Path(path).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", path], check=True)
    for module in GUEST_MODULES:
        if subprocess.run(["modprobe", module], capture_output=True, check=False).returncode != 0:
            say_in_guest(f"WARNING: could not load kernel module {module}")
    # The guest has no network card: vxlanpy picks its underlay from the default route, so give it one that
    # leads nowhere.
    routes = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True, check=True)
    if not routes.stdout.strip():
        add_dead_end_uplink([])
    daemon = None
    if dockerd:
        daemon = _start_dockerd(status_dir / "dockerd.log")
        say_in_guest("dockerd is up")
    try:
        status = subprocess.run(command, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=False).returncode
    except OSError as exc:
        say_in_guest(f"cannot run {command[0]}: {exc}")
        status = 127
    finally:
        if daemon is not None:
            _stop(daemon)
    (status_dir / "status").write_text(str(status))
    return status


# --------------------------------------------------------------------------------------------- command line


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/vm-run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", choices=sorted(KERNELS), default="bookworm", help="Debian's kernel of this suite")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="auto: KVM if it boots here")
    parser.add_argument("--memory", default="2G", help="the guest's memory (default 2G)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before the guest is killed")
    parser.add_argument("--dockerd", action="store_true", help="start a dockerd in the guest for the command")
    parser.add_argument(
        "--private-tmp",
        action="store_true",
        help="an empty tmpfs over the guest's /tmp instead of an overlay of this machine's: for dockerds that keep "
        "their layers under /tmp (tests/multihost), since overlay2 cannot stack on an overlay",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given")
    return args


def parse_guest(argv: list[str]) -> tuple[Path, set[str], list[str]]:
    """The guest's command line, `STATUS_DIR [FLAG...] [--] COMMAND...`: (status dir, flags, command)."""
    status_dir, rest = Path(argv[0]), argv[1:]
    flags = set()
    while rest[:1] and rest[0] in GUEST_FLAGS:
        flags.add(rest.pop(0))
    return status_dir, flags, rest[1:] if rest[:1] == ["--"] else rest


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["guest"]:
            status_dir, flags, command = parse_guest(argv[1:])
            return guest_main(status_dir, "--dockerd" in flags, command, private_tmp="--private-tmp" in flags)
        args = parse(argv)
        return run(
            args.kernel, args.accel, args.memory, args.timeout, args.dockerd, args.command, private_tmp=args.private_tmp
        )
    except (VmError, FetchError) as exc:
        print(f"vm-run: ERROR: {exc}", file=sys.stderr, flush=True)
        return VM_FAILURE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
