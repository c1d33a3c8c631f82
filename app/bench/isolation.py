"""Operating-system isolation of sandboxed programs, without root and without installed tools.

Linux: the program gets its own user, mount, network, PID, IPC and UTS namespaces (plain libc calls
through ctypes), and a new root built on a tmpfs from read-only bind mounts of the system and Python
directories plus one writable work folder (`/box`, also its home). The old root is detached, so the
user's files, /home, /root and /tmp are simply not there; the network namespace has no interface
but a down loopback. Then every capability is dropped (the bounding set too, with no_new_privs), so
the mounts cannot be undone. Where a rule refuses us that set-up but lets bubblewrap do it, the same
root through bwrap (`bwrap_command`). macOS: a Seatbelt profile with the same rules (`seatbelt_profile`).

Imported by the sandbox's child process before any model code runs; uses only the standard library.
"""
from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 4096, 16384, 1 << 18, 2
# statvfs flags -> mount flags. A bind mount inherits these from its source and, in a user namespace,
# a remount must repeat them (the kernel locks them), or it fails with EPERM.
_LOCKED = ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, 1024), (2048, 2048), (4096, 1 << 21))
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "i686": 217}
INNER_ID = 1000  # the uid/gid the program has inside its user namespace
BOX = "/box"  # the writable work folder inside the new root

# The system directories bound read-only into the new root (those that exist; symlinks such as
# /bin -> usr/bin on merged-/usr systems are recreated as symlinks).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
                "/etc/alternatives", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class IsolationError(OSError):
    """A namespace, mount or privilege call failed; the message says which and why."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise IsolationError(err, f"{what}: {os.strerror(err)}")


def available() -> str | None:
    """Why this platform cannot isolate at all (None when it may: the real test is doing it)."""
    if sys.platform.startswith("linux"):
        return None if os.uname().machine in _SYS_PIVOT_ROOT else f"no pivot_root number for {os.uname().machine}"
    if sys.platform == "darwin":
        return None if os.path.exists("/usr/bin/sandbox-exec") else "/usr/bin/sandbox-exec is missing"
    return f"no sandbox for {sys.platform}"


def unshare(flags: int = NAMESPACES) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise IsolationError(err, f"no new namespaces ({os.strerror(err)}): user namespaces may be switched "
                                  "off (sysctl user.max_user_namespaces or kernel.unprivileged_userns_clone)")


def write_id_maps(pid: int, uid: int, gid: int) -> None:
    """Map INNER_ID in `pid`'s new user namespace to `uid`/`gid` outside; written by its parent,
    which stays outside. An ordinary user maps only itself. Root maps a private uid, and itself as
    0 so it can still build the root (files of an unmapped uid cannot be created); the program then
    becomes INNER_ID without capabilities and cannot get back to 0."""
    root = os.geteuid() == 0
    if not root:  # required for an unprivileged gid map
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
    for name, outer in (("uid_map", uid), ("gid_map", gid)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(("0 0 1\n" if root else "") + f"{INNER_ID} {outer} 1\n")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {src} on {dst}")


def _bind(src: str, dst: str, writable: bool = False) -> None:
    try:
        _mount(src, dst, None, MS_BIND)
    except IsolationError:  # a tree with locked sub-mounts can only be bound whole
        _mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY)
    have = os.statvfs(dst).f_flag
    flags |= sum(ms for st, ms in _LOCKED if have & st)
    _mount(None, dst, None, flags)


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def python_dirs(site_packages=()) -> list[str]:
    """The directories this interpreter needs (its prefixes, stdlib, `site_packages`, a bundle's
    own folder), as real paths, minus those inside another one or inside the system directories."""
    cands = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(os.__file__)}
    if getattr(sys, "frozen", False):
        cands |= {os.path.dirname(sys.executable), getattr(sys, "_MEIPASS", sys.prefix)}
    prefixes = {os.path.realpath(p) for p in (*cands, *site_packages) if p}
    # sys.path entries inside a prefix (site-packages); others (an editable checkout) stay hidden.
    for p in sys.path:
        rp = os.path.realpath(p) if p else ""
        if rp and _under(rp, prefixes) and os.path.isdir(rp):
            prefixes.add(rp)
    # a venv's interpreter link points into its base Python: follow every link of the executable
    exe = sys.executable
    while os.path.islink(exe):
        exe = os.path.join(os.path.dirname(exe), os.readlink(exe))
        prefixes.add(os.path.dirname(os.path.realpath(exe)))
    keep = sorted(p for p in prefixes if os.path.exists(p) and p != "/" and not _under(p, SYSTEM_DIRS))
    return [p for p in keep if not _under(p, [q for q in keep if q != p])]


def build_root(new_root: str, box: str, extra_dirs: list[str]) -> None:
    """Make `new_root` (an empty directory) the root of this mount namespace: a tmpfs holding
    read-only binds of the system and `extra_dirs`, and `box` read-write at BOX. The old root is
    detached. Run in the new namespaces, as the first process of the PID namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do propagates back out
    _mount("tmpfs", new_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for path in (*SYSTEM_DIRS, *SYSTEM_FILES, *extra_dirs, BOX):
        src = box if path == BOX else path
        if not os.path.lexists(src):
            continue
        dst = new_root + path
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(src) and path in SYSTEM_DIRS:
            os.symlink(os.readlink(src), dst)
            continue
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            open(dst, "a").close()
        _bind(src, dst, writable=path == BOX)
    os.makedirs(new_root + "/tmp", exist_ok=True)  # exists already when Python lives under /tmp (a CI clone)
    os.chdir(new_root)
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only ours.
    _check(_libc.syscall(_SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_privileges(set_ids: bool) -> None:
    """Become INNER_ID (`set_ids`: we started as root, mapped to a private uid) and give up every
    capability, for good: empty bounding and ambient sets, no_new_privs, then capset to zero."""
    if set_ids:
        os.setgroups([])
        os.setresgid(INNER_ID, INNER_ID, INNER_ID)
        os.setresuid(INNER_ID, INNER_ID, INNER_ID)
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability this kernel knows
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words: all zero
    _check(_libc.capset(header, data), "capset")


def bwrap_command(box: str, extra_dirs: list[str], network: bool = False) -> list[str]:
    """The same new root through bubblewrap, where it is installed and our own set-up is refused
    (Ubuntu's AppArmor lets bwrap, not every program, use user namespaces). The whole child runs
    inside, the monitor too: it is not dumpable, so the program still cannot reach its verdict."""
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if network:
        args.append("--share-net")
    for path in (*SYSTEM_DIRS, *SYSTEM_FILES):
        if path.startswith("/dev/") or not os.path.lexists(path):
            continue
        if os.path.islink(path) and path in SYSTEM_DIRS:
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    args += ["--dev", "/dev"]
    for path in extra_dirs:
        args += ["--ro-bind", path, path]
    return [*args, "--bind", box, BOX, "--chdir", BOX, "--remount-ro", "/dev", "--remount-ro", "/"]


def seatbelt_profile(box: str, read_dirs: list[str]) -> str:
    """A macOS Seatbelt (sandbox-exec) profile with the Linux rules: no network, reads only of the
    system and Python directories, writes only in `box`. Not run in this project's CI (Linux)."""
    q = lambda p: '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    system = ("/usr/lib", "/usr/share", "/System", "/Library/Frameworks", "/private/var/db/dyld", "/opt/homebrew")
    reads = " ".join(f"(subpath {q(os.path.realpath(p))})" for p in (*system, *read_dirs, box))
    devs = " ".join(f'(literal "{d}")' for d in ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"))
    return "\n".join([
        "(version 1)",
        "(deny default)",
        "(allow process-fork)",
        f"(allow process-exec (literal {q(sys.executable)}) (literal {q(os.path.realpath(sys.executable))}))",
        "(allow signal (target same-sandbox))",
        "(allow sysctl-read)",
        "(allow file-read-metadata)",  # stat() of path components; no file contents
        f"(allow file-read* {reads} {devs})",
        f"(allow file-write* (subpath {q(os.path.realpath(box))}) {devs})",
        "(deny network*)",
        "",
    ])
