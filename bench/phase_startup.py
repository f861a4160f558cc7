"""
Client start-up: the wall time of ``sig2knockc --help`` and its top-level imports
(``python -X importtime``). Process start -> first packet on the wire comes from the time to
access runs of the other phases (pcap).
"""

import os
import re

from driver import BIN, PY


def startup(bench):
    help_ms = []
    for _ in range(10):
        answer = bench.agent({"op": "run", "argv": [os.path.join(BIN, "sig2knockc"), "--help"]})
        if "t1" not in answer:
            raise RuntimeError(f"sig2knockc --help: {answer.get('result')}")
        help_ms.append((answer["t1"] - answer["t0"]) * 1000)
    bench.results["help_ms"] = help_ms
    answer = bench.agent({"op": "run", "argv": [PY, "-X", "importtime", "-m",
                                                "sig2knock.scripts.client", "--help"]})
    rows = []
    for line in answer.get("stderr", "").splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((int(match.group(2)), len(match.group(3)), match.group(4)))
    top_level = sorted([r for r in rows if r[1] <= 1], reverse=True)[:8]
    bench.results["importtime"] = [(name, us / 1000) for us, _, name in top_level]
