"""
sig2knock against knockd and fwknop on one namespace lab, in one run; prints one table.

    ./bootstrap && .venv/bin/python bench/run.py [--runs 20] [--only PHASES] [--json out.json]

Root only. Traffic stays in the lab's namespaces (198.18.0.0/15); every loop is bounded in count
and time; the lab is torn down in ``finally``. See docs/BENCHMARKS.md.

Modules: ``driver`` (lab, agent, captures, timed runs), ``phase_knockd``, ``phase_fwknop``,
``phase_sig2knock``, ``phase_throughput``, ``phase_startup``, ``phase_ssh``, ``phase_fsync`` (one
phase each), ``table`` (the table and the targets); ``agent``, ``capture``, ``noise``, ``sink`` run inside the namespaces.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from driver import PHASES, Bench, ensure_packages, lab_module  # noqa: E402
from phase_fsync import fsync  # noqa: E402
from phase_fwknop import fwknop  # noqa: E402
from phase_knockd import knockd  # noqa: E402
from phase_sig2knock import sig2knock  # noqa: E402
from phase_ssh import ssh  # noqa: E402
from phase_startup import startup  # noqa: E402
from phase_throughput import throughput  # noqa: E402
from table import render  # noqa: E402

PHASE_FUNCTIONS = {"knockd": knockd, "fwknop": fwknop, "sig2knock": sig2knock,
                   "throughput": throughput, "startup": startup, "ssh": ssh,
                   "fsync": fsync}
assert tuple(PHASE_FUNCTIONS) == PHASES


def phase_list(text):
    """``--only``'s comma list, checked; returned in the order the phases run."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - set(PHASES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown phase(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"choose from {','.join(PHASES)}")
    return [name for name in PHASES if name in names]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per time-to-access figure")
    parser.add_argument("--attack-runs", type=int, default=None,
                        help="runs under attack per tool (default: runs / 2, at least 5)")
    parser.add_argument("--plain-runs", type=int, default=None,
                        help="plain-connect runs per tool (default: runs, at most 10; knockd "
                        "and fwknop take ~1 s each)")
    parser.add_argument("--pairs", type=int, default=5,
                        help="direct/nat throughput pairs per firewall (5 s each; default 5)")
    parser.add_argument("--only", type=phase_list, default=list(PHASES), metavar="PHASES",
                        help=f"run only these phases, a comma list of {','.join(PHASES)} "
                        "(default: all); the others show as 'not run'")
    parser.add_argument("--json", help="also write the raw results here")
    options = parser.parse_args()
    why = lab_module.why_not_runnable()
    if why:
        sys.exit(f"bench: {why}")
    if {"knockd", "fwknop", "throughput", "ssh"} & set(options.only):
        ensure_packages()

    def bounded(value, low, high):
        return max(low, min(value, high))

    runs = bounded(options.runs, 1, 1000)
    attack_runs = bounded(options.attack_runs or max(5, runs // 2), 1, 1000)
    plain_runs = bounded(options.plain_runs or min(runs, 10), 1, 1000)
    bench = Bench(runs, attack_runs, plain_runs, bounded(options.pairs, 1, 100))
    started = time.monotonic()
    bench.run([(name, PHASE_FUNCTIONS[name]) for name in options.only])
    print(render(bench))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if options.json:
        with open(options.json, "w") as out:
            json.dump({"phases": bench.phases_run, "results": bench.results,
                       "notes": bench.notes, "failures": bench.failures}, out, indent=1,
                      default=str)


if __name__ == "__main__":
    main()
