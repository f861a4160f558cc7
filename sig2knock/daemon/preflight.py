"""
What ``sig2knockd --check-config`` checks beyond the files, so that it finds what the daemon
would then refuse at start: a ``STATE_DIR`` others could write to, and a control port that another
program holds. Nothing here opens anything for longer than the check.
"""

import errno
import os
import socket
from typing import Optional

from sig2knock.daemon.trusted_path import unsafe_parent
from sig2knock.protocol.addresses import IPAddress


def state_dir_problem(
    path: str, uid: Optional[int] = None, for_its_owner: bool = False
) -> Optional[str]:
    """
    Why the daemon of user ``uid`` (default: this process's) would refuse ``STATE_DIR`` at
    ``path``: writable by group or others, owned by another user than the daemon's or root's, or
    below a directory another user could change (``trusted_path``); or ``None``. A directory
    that does not exist yet is fine (the daemon makes it), if its parents are. With
    ``for_its_owner`` (root's ``--check-config``, for a daemon of another user), the directory's
    owner is taken for the daemon's user.
    """
    uid = os.geteuid() if uid is None else uid
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return _parent_problem(path, uid)
    except OSError as error:
        return f"STATE_DIR {path}: {error.strerror}"
    if status.st_mode & 0o022:
        return f"STATE_DIR {path}: writable by group or others; fix with: chmod 700 {path}"
    if for_its_owner:
        uid = status.st_uid
    elif status.st_uid not in (0, uid):
        return (
            f"STATE_DIR {path}: owned by uid {status.st_uid}, not by the daemon's user (uid"
            f" {uid}); fix with: chown {uid} {path}"
        )
    return _parent_problem(path, uid)


def _parent_problem(path: str, uid: int) -> Optional[str]:
    problem = unsafe_parent(path, uid)
    return None if problem is None else f"STATE_DIR {path}: {problem}"


def control_port_holder(port: int, address: Optional[IPAddress] = None) -> Optional[str]:
    """
    Who holds UDP ``port`` (on ``address``, else on any address): ``None`` when the daemon could
    bind it now, else a short description of the holder (its pid and command line when this
    process may see them, as root does).
    """
    if address is not None:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        where = (str(address), port)
    else:
        family, where = socket.AF_INET6, ("::", port)
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if address is None:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
        probe.bind(where)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            return None  # not a conflict (an address not on this host yet): the start says
        return _holder_of(port) or "another program"
    finally:
        probe.close()
    return None


def _holder_of(port: int) -> Optional[str]:
    """
    The process whose UDP socket is bound to ``port``, from /proc (Linux), as ``pid N (command)``.
    """
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)
                for line in lines:
                    fields = line.split()
                    if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
            for descriptor in descriptors:
                target = os.readlink(f"/proc/{pid}/fd/{descriptor}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
                    return f"pid {pid} ({command.strip()[:120]})"
        except OSError:
            continue
    return None


def is_sig2knock(holder: str) -> bool:
    """
    Whether ``holder`` (from ``control_port_holder``) is a running sig2knock daemon.
    """
    command = holder.split("(", 1)[-1].rstrip(")").split()
    names = [os.path.basename(word) for word in command]
    return "sig2knockd" in names or ("twistd" in names and "sig2knock" in command)
