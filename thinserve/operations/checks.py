"""The doctor's checks: each looks at one thing thinserve needs and says how to fix it.

A missing part is FAIL when the configuration needs it (Xvnc for a local
desktop, QEMU for a QEMU desktop, KVM for ``accel = "kvm"``) and WARN when
it only would be needed by another configuration, so ``thinserve doctor``
exits 0 on a machine that can run the configuration it was given.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import stat
import threading
from pathlib import Path

from .. import statelock
from ..config import Config
from ..store.location import local_file
from . import kvmprobe, network, ports
from .report import Check, fail, ok, problem, warn

DISK_FAIL = 100 * 1024 * 1024  # bytes free on the state directory's file system
DISK_WARN = 1024 * 1024 * 1024
CERT_WARN_DAYS = 30
LIBVIRT_TIMEOUT = 10.0  # seconds to reach a hypervisor
SERVICE_USER = "thinserve"


def programs(config: Config) -> list[Check]:
    """Xvnc for local and Xvnc desktops; QEMU for QEMU desktops."""
    needs_xvnc = bool(config.local_desktops or config.setup.xvnc_desktops)
    needs_qemu = bool(config.setup.qemu_desktops)
    wanted = [
        ("Xvnc", "Xvnc", "tigervnc-standalone-server", needs_xvnc),
        ("QEMU", "qemu-system-x86_64", "qemu-system-x86", needs_qemu),
        ("QEMU", "qemu-img", "qemu-utils", needs_qemu),
    ]
    checks = []
    for name, program, package, needed in wanted:
        found = shutil.which(program)
        if found:
            checks.append(ok(name, f"{program} is {found}"))
        else:
            why = "the configured desktops need it" if needed else "needed only for such desktops"
            checks.append(
                problem(
                    name, needed, f"{program} is not on PATH ({why})", f"apt-get install {package}"
                )
            )
    return checks


def kvm(config: Config, boot_guest: bool = True, device: Path = Path("/dev/kvm")) -> Check:
    """/dev/kvm there and read-write for this user, and a guest really runs with it."""
    needed = any(qemu.accel == "kvm" for qemu, _ in config.setup.qemu_desktops)
    slow = "QEMU desktops fall back to TCG (many times slower)"
    if not device.exists():
        return problem(
            "KVM",
            needed,
            f"{device} is missing: {slow}",
            "enable virtualisation in the firmware (or nested virtualisation for a VM), "
            "then modprobe kvm_intel (or kvm_amd)",
        )
    if not os.access(device, os.R_OK | os.W_OK):
        return problem(
            "KVM",
            needed,
            f"{device} is not read-write for {_me()}: {slow}",
            f"adduser {_me()} kvm (then log in again, or restart thinserve)",
        )
    qemu = shutil.which("qemu-system-x86_64")
    if not boot_guest or qemu is None:
        return ok("KVM", f"{device} is read-write (no test guest booted)")
    outcome = kvmprobe.run_guest(qemu)
    if outcome.ran:
        return ok("KVM", outcome.detail)
    return problem(
        "KVM",
        needed,
        f"{device} opens but a guest does not run: {outcome.detail}; {slow}",
        "check `dmesg | grep -i kvm` and that virtualisation is enabled for this machine",
    )


def libvirt(config: Config) -> list[Check]:
    """Each configured libvirt host answers (bounded by a timeout)."""
    checks = []
    for uri in (str(host.uri) for lc in config.setup.libvirt for host in lc.connections):
        error = _libvirt_error(uri)
        if error is None:
            checks.append(ok("libvirt", f"{uri} answers"))
        else:
            checks.append(
                fail(
                    "libvirt",
                    f"cannot reach {uri}: {error}",
                    f"virsh -c {uri} list (check libvirtd runs and that {_me()} is in the "
                    "libvirt group)",
                )
            )
    return checks


def _libvirt_error(uri: str) -> str | None:
    result: list[str | None] = []

    def connect() -> None:
        try:
            import libvirt as lv

            lv.open(uri).close()
            result.append(None)
        except Exception as exc:  # libvirt.libvirtError, ImportError: report either
            result.append(" ".join(str(exc).split()))

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(LIBVIRT_TIMEOUT)
    return result[0] if result else f"no answer within {LIBVIRT_TIMEOUT:g} s"


def multicast(config: Config) -> Check:
    """Discovery needs a LAN interface with MULTICAST and an address."""
    if not config.discovery:
        return ok("multicast", "discovery is off ([discovery] enabled = false)")
    usable = network.multicast_interfaces(config.discovery_interfaces)
    if not usable:
        where = ", ".join(config.discovery_interfaces) or "any interface"
        return warn(
            "multicast",
            f"no up, multicast-capable LAN interface with an address ({where}): terminals "
            "will not find thinserve by zeroconf",
            "ip link set dev IFACE multicast on up (or list the LAN's interface in "
            "[discovery] interfaces)",
        )
    names = ", ".join(f"{name} ({' '.join(addrs)})" for name, addrs in sorted(usable.items()))
    beside = "; avahi-daemon runs too (it shares port 5353)" if network.avahi_running() else ""
    return ok("multicast", f"zeroconf can use {names}{beside}")


def listening_ports(config: Config) -> list[Check]:
    """Each configured TCP port free, or held by the thinserve of this state directory."""
    server = statelock.holder(config.state_dir)
    checks = []
    for port in ports.tcp_ports(config.listen + config.web_listen + config.dashboard_listen):
        name = f"port {port.port}"
        if not ports.in_use(port):
            checks.append(ok(name, f"free ({port.endpoint})"))
            continue
        pids = ports.holders(port.port)
        if server and server in pids:
            checks.append(ok(name, f"held by this thinserve (pid {server})"))
            continue
        who = ", ".join(f"{ports.command_name(p)} (pid {p})" for p in pids) or "another program"
        checks.append(
            fail(
                name,
                f"in use by {who}: thinserve cannot listen on {port.endpoint}",
                f"ss -ltnp 'sport = :{port.port}' (stop that program, or change listen/"
                "web_listen/dashboard_listen in [server])",
            )
        )
    return checks


def directories(config: Config) -> list[Check]:
    return [
        _directory("state_dir", config.state_dir, must_exist=False),
        _directory("runtime_dir", config.runtime_dir, must_exist=False),
    ]


def _directory(name: str, path: Path, must_exist: bool) -> Check:
    """Owned by thinserve's user, writable by it, not writable by others."""
    user = _service_user()
    make = f"install -d -m 0750 -o {user} -g {user} {path}"
    try:
        st = path.stat()
    except FileNotFoundError:
        parent = _existing_parent(path)
        if os.access(parent, os.W_OK | os.X_OK):
            return ok(name, f"{path} does not exist yet; it is made at the first start")
        return problem(name, must_exist, f"{path} is missing and {parent} is not writable", make)
    except OSError as exc:
        return fail(name, f"cannot look at {path}: {exc.strerror}", make)
    if not stat.S_ISDIR(st.st_mode):
        return fail(name, f"{path} is not a directory", f"mv {path} {path}.old && {make}")
    owner = _user_name(st.st_uid)
    if owner not in (user, _me()):
        return fail(name, f"{path} belongs to {owner}, not {user}", f"chown {user}: {path}")
    if st.st_mode & 0o022:
        return fail(
            name,
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            f"chmod 0750 {path}",
        )
    if not st.st_mode & stat.S_IWUSR:
        return fail(name, f"{path} is not writable by its owner {owner}", f"chmod u+rwx {path}")
    return ok(name, f"{path} ({owner}, mode {stat.S_IMODE(st.st_mode):04o})")


def certificate(config: Config) -> list[Check]:
    """The server certificate: configured, or the one thinserve made under state_dir/tls."""
    if config.tls_cert and config.tls_key:
        cert, key, fix = Path(config.tls_cert), Path(config.tls_key), "tls_cert/tls_key in [server]"
    else:
        directory = Path(local_file(config.database_path, config.state_dir)).parent / "tls"
        cert, key = directory / "server.crt", directory / "server.key"
        if not cert.exists() and not key.exists():
            return [ok("certificate", f"none yet: thinserve makes one in {directory} at start")]
        fix = f"rm -r {directory} (a new one is made at the next start; terminals must pin it)"
    return [_certificate_files(cert, key, fix)]


def _certificate_files(cert: Path, key: Path, fix: str) -> Check:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    name = "certificate"
    try:
        chain = x509.load_pem_x509_certificates(cert.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return fail(name, f"cannot read {cert} / {key}: {exc}", f"fix {fix}")
    leaf = chain[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, public) != private.public_key().public_bytes(
        der, public
    ):
        return fail(name, f"{key} is not the key of {cert}", f"fix {fix}")
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc <= now:
        return fail(name, f"{cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}", fix)
    if key.stat().st_mode & 0o004:
        return fail(name, f"{key} is readable by everyone", f"chmod 0600 {key}")
    days = (leaf.not_valid_after_utc - now).days
    if days < CERT_WARN_DAYS:
        return warn(name, f"{cert} expires in {days} days", fix)
    return ok(name, f"{cert} valid until {leaf.not_valid_after_utc:%Y-%m-%d}, key matches")


def disk_space(config: Config) -> Check:
    where = _existing_parent(config.state_dir)
    free = shutil.disk_usage(where).free
    text = f"{free / 1024**3:.1f} GiB free on {where}"
    fix = f"df -h {where}; free space there (old overlays, logs) or move state_dir"
    if free < DISK_FAIL:
        return fail("disk", text, fix)
    if free < DISK_WARN:
        return warn("disk", text, fix)
    return ok("disk", text)


def accounts(config: Config) -> list[Check]:
    """The Unix accounts the local desktops run as exist."""
    from ..backends.accounts import missing_account

    checks = []
    for desktop in config.local_desktops:
        user = getattr(desktop, "user", None)
        if user is None:
            checks.append(ok("accounts", f"desktop {desktop.name} runs as thinserve's own user"))
            continue
        try:
            pwd.getpwnam(user)
        except KeyError:
            advice = missing_account(user)
            command = advice.split("(", 1)[-1].split(")", 1)[0]
            checks.append(fail("accounts", f"desktop {desktop.name}: {advice}", command))
        else:
            checks.append(ok("accounts", f"desktop {desktop.name} runs as {user}"))
    return checks


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _me() -> str:
    return _user_name(os.geteuid())


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _service_user() -> str:
    """Who should own thinserve's directories: the packaged service's user when
    there is one and this is root, else whoever runs the doctor."""
    if os.geteuid() == 0:
        try:
            return pwd.getpwnam(SERVICE_USER).pw_name
        except KeyError:
            pass
    return _me()
