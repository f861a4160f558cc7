"""
Helpers shared by the unit tests: example configurations, users files with cheap keys, running
the project's commands as subprocesses against this checkout, and (as root) a scratch network
namespace with the real nft run inside it.
"""

import itertools
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from sig2knock.firewall.runner import find_tool
from sig2knock.kdf import KdfParams
from sig2knock.users import format_user_line

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_CONFIG = os.path.join(REPOSITORY, "etc", "sig2knockd.conf")

# The cheapest scrypt the KDF accepts: keeps tests fast; production uses KdfParams().
CHEAP_KDF = KdfParams(n=1024, r=1, p=1)

BASE_CONFIG = {
    "UDP_PORT": "1001",
    "FORWARD_TO_IP": "127.0.0.1",
    "FORWARD_TO_PORT": "22",
}


def config_text(settings: Dict[str, str]) -> str:
    """
    A configuration file's text from ``settings`` (KEY -> VALUE), one line each, in order.
    """
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def write_config(directory: str, extra: Optional[Dict[str, str]] = None) -> str:
    """
    Write a valid configuration (plus ``extra`` keys) into ``directory`` with its users file and
    state directory beside it; return the configuration's path.
    """
    settings = dict(BASE_CONFIG)
    # Loopback exists everywhere: the tests need no default route.
    settings.update(
        {"USERS_FILE": "user.txt", "STATE_DIR": "state", "FIREWALL": "none", "INTERFACE": "lo"}
    )
    settings.update(extra or {})
    path = os.path.join(directory, "sig2knockd.conf")
    with open(path, "w", encoding="utf-8") as config_file:
        config_file.write(config_text(settings))
    users_path = os.path.join(directory, "user.txt")
    if not os.path.exists(users_path):
        write_users(users_path, {"alice": "alice's password"})
    return path


def write_users(path: str, passwords: Dict[str, str], mode: int = 0o600) -> None:
    """
    Write a users file with a line per user (cheap KDF) and set its mode.
    """
    lines = [format_user_line(user, password, CHEAP_KDF) for user, password in passwords.items()]
    with open(path, "w", encoding="utf-8") as users_file:
        users_file.write("\n".join(lines) + "\n")
    os.chmod(path, mode)


def run_module(
    module: str, arguments: Sequence[str], stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess:
    """
    Run ``python -m module arguments`` with the Python running the tests (whose sig2knock is the
    one under test), feeding ``stdin``; text output.
    """
    command: List[str] = [sys.executable, "-m", module, *arguments]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPOSITORY,
    )


def installed_command(name: str) -> Optional[str]:
    """
    The path of console script ``name`` installed beside this Python, or ``None``.
    """
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.access(path, os.X_OK) else None


_scratch_namespaces = itertools.count()


def scratch_namespace(test: Any, stem: str) -> str:
    """
    A network namespace of ``test``'s own (root only), deleted by a cleanup; the test is skipped
    when it cannot be made. Returns its name.
    """
    name = f"{stem}{os.getpid()}x{next(_scratch_namespaces)}"
    ip = find_tool("ip")
    created = subprocess.run(
        [ip, "netns", "add", name], capture_output=True, text=True, timeout=10
    )
    if created.returncode != 0:
        raise test.skipTest(f"cannot create a network namespace: {created.stderr.strip()}")
    test.addCleanup(
        subprocess.run, [ip, "netns", "delete", name], capture_output=True, timeout=10
    )
    return name


def nft_in(namespace: str, *arguments: str, stdin: str = "") -> subprocess.CompletedProcess:
    """
    The real nft run with ``arguments`` (and ``stdin``) inside ``namespace``.
    """
    return subprocess.run(
        [find_tool("ip"), "netns", "exec", namespace, find_tool("nft"), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
    )
