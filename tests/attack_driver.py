"""
Driving the attack tools (``tests/attack_tools.py``) from ``tests/test_attacks.py``: running
them in the lab's namespaces, in the foreground or the background, reading what they captured,
sampling the daemon's memory, and reading its log's refusals.
"""

import json
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Sequence

from tests import lab as lab_module


# The module whose tools run in the namespaces: ``python -m tests.attack_tools COMMAND JSON``.
TOOLS_MODULE = "tests.attack_tools"


def tool_command(name: str, args: Dict[str, Any]) -> List[str]:
    """
    The command line that runs tool ``name`` with ``args``.
    """
    return [sys.executable, "-m", TOOLS_MODULE, name, json.dumps(args)]


def run_tool(lab: Any, role: str, name: str, args: Dict[str, Any], timeout: float = 60) -> Dict:
    """
    Run tool ``name`` in ``role``'s namespace, wait for it, and return its JSON result.
    """
    result = lab.ns(role, tool_command(name, args), check=False, timeout=timeout,
                    cwd=lab_module.REPOSITORY)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed ({result.returncode}): {result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class Background:
    """
    A tool started in the background in a namespace; ``start`` waits until it says ``ready``,
    ``result`` waits for its JSON result (the lab kills it on close in any case).
    """

    def __init__(self, lab: Any, role: str, name: str, args: Dict[str, Any]) -> None:
        self.name = name
        self.process = lab.start(
            role, tool_command(name, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=lab_module.REPOSITORY,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            _, error = self.process.communicate(timeout=10)
            raise RuntimeError(f"{name} did not start: {line!r} {error}")

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def result(self, timeout: float = 30) -> Dict[str, Any]:
        output, error = self.process.communicate(timeout=timeout)
        if self.process.returncode != 0:
            raise RuntimeError(f"{self.name} failed ({self.process.returncode}): {error}")
        return json.loads(output.strip().splitlines()[-1])


def read_capture(path: str) -> List[Dict[str, Any]]:
    """
    The packets the ``capture`` tool wrote to ``path``, one dictionary each.
    """
    with open(path, encoding="utf-8") as captured:
        return [json.loads(line) for line in captured if line.strip()]


def add_addresses(lab: Any, role: str, device: str, addresses: Sequence[str]) -> None:
    """
    Add ``addresses`` (each /24) to ``device`` in ``role``'s namespace, in one ``ip -batch``.
    """
    batch = "".join(f"addr add {address}/24 dev {device}\n" for address in addresses)
    lab.ns(role, ["ip", "-batch", "-"], input=batch)


def rss_kib(pid: int) -> int:
    """
    The resident set size of process ``pid`` in KiB (VmRSS), or -1 when it is gone.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class RssSampler(threading.Thread):
    """
    Samples a process's RSS every ``interval`` seconds until ``stop``; keeps the peak.
    """

    def __init__(self, pid: int, interval: float = 0.05, limit: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.limit = limit
        self.peak = rss_kib(pid)
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            value = rss_kib(self.pid)
            self.peak = max(self.peak, value)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(timeout=5)
        return self.peak


def log_since(lab: Any, offset: int) -> str:
    """
    What the daemon logged after the first ``offset`` characters of its log.
    """
    return lab.log()[offset:]


def refusal_lines(log: str, reason: str) -> List[str]:
    """
    The log lines that refuse one datagram with ``reason``.
    """
    return [
        line for line in log.splitlines()
        if "refused datagram" in line and f": {reason} " in line + " "
    ]


_SUMMARY = re.compile(r"refused [0-9]+ datagrams and connections in the last [^:]*: (.*?); busiest")
_SUMMARY_ITEM = re.compile(r"([a-z][a-z-]*) ([0-9]+)")


def refusal_count(log: str, reason: str) -> int:
    """
    How many datagrams ``log`` says were refused with ``reason``, at least: the daemon logs the
    first refusals of each interval one by one and, under a flood, sums up the interval in one
    line (all of its refusals); this is the larger of the two counts.
    """
    summed = 0
    for match in _SUMMARY.finditer(log):
        for name, number in _SUMMARY_ITEM.findall(match.group(1)):
            if name == reason:
                summed += int(number)
    return max(summed, len(refusal_lines(log, reason)))


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    """
    Whether ``predicate()`` became true within ``timeout`` seconds, asked every ``interval``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
