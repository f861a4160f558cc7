"""
``sig2knockd --status [--json]``: ask the running daemon for its live view
(``sig2knock.daemon.status``) over its UNIX socket in ``STATE_DIR``, and print it as a table for
people or as the daemon's JSON document for scripts. Plain sockets, no reactor.
"""

import errno
import json
import socket
import sys
from typing import Any, Dict, List

from sig2knock.daemon.status import FORMAT_VERSION, socket_path

MAX_ANSWER = 4 * 1024 * 1024
COLUMNS = ("USER", "SOURCE", "SERVICE", "STATE", "PORT", "LEFT", "USED")


class StatusError(Exception):
    """
    No answer from a daemon; the message says why, in one line.
    """


def ask(state_dir: str, timeout: float = 5.0) -> Dict[str, Any]:
    """
    The live view of the daemon whose ``STATE_DIR`` is ``state_dir``; raises ``StatusError``
    when no daemon answers there, or this user may not ask.
    """
    path = socket_path(state_dir)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    try:
        try:
            client.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise StatusError(f"no daemon is running: nothing answers on {path}") from None
        except PermissionError:
            raise StatusError(
                f"{path}: permission denied: only root and the daemon's user may ask"
            ) from None
        except OSError as error:
            raise StatusError(f"cannot reach {path}: {error.strerror or error}") from None
        chunks: List[bytes] = []
        received = 0
        while True:
            try:
                chunk = client.recv(65536)
            except socket.timeout:
                raise StatusError(f"the daemon on {path} did not answer in {timeout:g}s") from None
            except OSError as error:
                if error.errno == errno.ECONNRESET:
                    chunk = b""
                else:
                    raise StatusError(f"{path}: {error.strerror or error}") from None
            if not chunk:
                break
            received += len(chunk)
            if received > MAX_ANSWER:
                raise StatusError(f"the answer on {path} is too long")
            chunks.append(chunk)
    finally:
        client.close()
    if not chunks:
        raise StatusError(
            f"the daemon on {path} did not answer: only root and the daemon's user may ask"
            " (if you are one of them, the daemon's log says what went wrong)"
        )
    try:
        document = json.loads(b"".join(chunks))
    except ValueError:
        raise StatusError(f"the answer on {path} is not a live view") from None
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise StatusError(f"the daemon on {path} speaks another version of the live view")
    return document


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}s"


def _used(entry: Dict[str, Any]) -> str:
    if entry["used"] is None:
        return "?"
    if entry["port"] is None:
        return "-"
    return "yes" if entry["used"] else "no"


def format_table(document: Dict[str, Any]) -> str:
    """
    The live view for people: a line per session (pending ones and open or lately used
    grants) under a heading, then a summary line.
    """
    entries = document["sessions"]
    rows = [
        (
            entry["user"],
            entry["source"],
            entry["service"] or "default",
            entry["state"],
            "-" if entry["port"] is None else str(entry["port"]),
            _seconds(entry["time_left"]),
            _used(entry),
        )
        for entry in entries
    ]
    lines = []
    if rows:
        widths = [max(len(row[column]) for row in [COLUMNS, *rows]) for column in
                  range(len(COLUMNS))]
        for row in [COLUMNS, *rows]:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
                         .rstrip())
    counts: Dict[str, int] = {}
    for entry in entries:
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    lines.append(
        f"{len(entries)} session(s){': ' + summary if summary else ''}; daemon pid"
        f" {document['pid']}, {document['config']}, FORWARD_MODE {document['forward_mode']}"
    )
    if any(entry["used"] is None for entry in entries):
        lines.append("USED ?: the firewall could not tell whether the kernel took the connection")
    return "\n".join(lines) + "\n"


def status_command(config_path: str, as_json: bool, write: Any) -> int:
    """
    ``--status``: ask the daemon of the configuration at ``config_path`` and ``write`` its
    answer (a table, or with ``as_json`` its JSON document); return the exit status.
    """
    from sig2knock.daemon.settings import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"sig2knockd: {error}", file=sys.stderr)
        return 1
    try:
        document = ask(config.state_dir)
    except StatusError as error:
        # The socket is found through the file as it is now: say which file named it.
        print(f"sig2knockd: {error} (STATE_DIR of {config.path})", file=sys.stderr)
        return 1
    if as_json:
        write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        write(format_table(document))
    return 0
