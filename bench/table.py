"""
The benchmark's table: one row per figure, a column per tool, the targets and the notes. A
phase that was not run (``run.py --only``) shows as ``not run``.

Packets come from ``capture.py`` on the server's bridge: ``(ts, proto, src, sport, dst, dport,
tcp flags, IP length)``. sig2knock's control messages are told apart by direction and size
(IPv4 + UDP headers, 28 bytes, plus the message): P1 (knock request; 243 bytes with the default 4
knocks) and P2 (confirm, 90 bytes) from the client to the control port, P3 (grant, 117 bytes) from
the control port to the client. The knocks are the client's other SYNs (or, with
``KNOCK_PROTO = udp``, datagrams) to the server before P3.
"""

import os
import re

from driver import CLIENT_IP, CONTROL_PORT, MANY, PHASES, cell, med, ms_list
from phase_fsync import DELAY_MS as FSYNC_DELAY_MS

from sig2knock.protocol import wire

NOT_RUN = "not run"
IP_UDP = 28
P1_LENGTHS = range(IP_UDP + wire.MIN_KNOCK_REQUEST_SIZE, IP_UDP + wire.MAX_KNOCK_REQUEST_SIZE + 1)
P2_LENGTH = IP_UDP + wire.CONFIRM_SIZE
P3_LENGTH = IP_UDP + wire.GRANT_SIZE
SYN, ACK = 0x02, 0x10
NAT_TARGET = 0.90
REACTION_TARGET_MS = 2.0
SSH_TARGET = 1.00  # a login through sig2knock no slower than a direct one
FIRST_PACKET_TARGET_MS = 45.0


# -- reading the packets ----------------------------------------------------------------------


def first_packet_ms(records, proto):
    values = []
    for record in records:
        packets = [p for p in record.get("packets", ()) if p[2] == CLIENT_IP and p[1] == proto]
        if packets:
            values.append((packets[0][0] - record["t0"]) * 1000)
    return values


def is_syn(packet):
    return packet[1] == 6 and packet[6] & (SYN | ACK) == SYN


def control_messages(packets):
    """P1s, P2s and P3s of one run, by direction and size (by order if the sizes do not fit)."""
    to_control = [p for p in packets
                  if p[1] == 17 and p[2] == CLIENT_IP and p[5] == CONTROL_PORT]
    p3 = [p for p in packets if p[1] == 17 and p[3] == CONTROL_PORT and p[4] == CLIENT_IP
          and p[7] == P3_LENGTH]
    p1 = [p for p in to_control if p[7] in P1_LENGTHS and p[7] != P2_LENGTH]
    p2 = [p for p in to_control if p[7] == P2_LENGTH]
    return p1 or to_control, p2 or to_control, p3


def s2k_breakdown(records):
    """Per run: start->P1, P1->P3 (server reaction incl. rounds), last knock->P3, ..."""
    parts = {"start_p1": [], "reaction": [], "knock_p3": [], "p3_echo": [], "rounds": [],
             "last_p2_p3": [], "client_exit_ms": []}
    for record in records:
        packets = record.get("packets", ())
        rounds = [int(word) for word in re.findall(r"round (\d+)", record.get("stderr", ""))]
        if rounds:
            parts["rounds"].append(max(rounds))
        p1, p2, p3 = control_messages(packets)
        if not p1 or not p3 or record.get("t_echo") is None:
            continue
        t3 = p3[0][0]
        parts["start_p1"].append((p1[0][0] - record["t0"]) * 1000)
        parts["reaction"].append((t3 - p1[0][0]) * 1000)
        confirms = [p for p in p2 if p[0] < t3]
        if confirms:
            parts["last_p2_p3"].append((t3 - confirms[-1][0]) * 1000)
        knocks = [p for p in packets if p[2] == CLIENT_IP and p[0] < t3 and p[5] != CONTROL_PORT
                  and (is_syn(p) or p[1] == 17)]
        if knocks:
            parts["knock_p3"].append((t3 - knocks[-1][0]) * 1000)
        parts["p3_echo"].append((record["t_echo"] - t3) * 1000)
        parts["client_exit_ms"].append((record["t_client"] - t3) * 1000)
    return parts


def dropped_first_syn(records):
    """Runs of a plain connect whose first SYN to the service was dropped (pcap: >1 SYN)."""
    dropped = 0
    for record in records:
        port = record.get("port")
        syns = [p for p in record.get("packets", ()) if p[2] == CLIENT_IP and p[5] == port
                and is_syn(p)]
        if len(syns) > 1 or (not record.get("packets") and (record.get("ms") or 0) > 900):
            dropped += 1
    return dropped


# -- the table --------------------------------------------------------------------------------


def ratio(s2k, others, higher_better=False):
    others = [o for o in others if o is not None]
    if s2k is None or not others:
        return "n/a"
    best = max(others) if higher_better else min(others)
    return f"{s2k / best:.2f}x"


class Table:
    def __init__(self, bench):
        self.bench = bench
        self.r = bench.results
        self.ran = set(bench.phases_run)
        self.rows = []
        self.targets = []

    def row(self, metric, k, f, s, ratio_text=""):
        if s == NOT_RUN and ratio_text == "n/a":
            ratio_text = ""
        self.rows.append((metric, k, f, s, ratio_text))

    def c(self, phase, values, digits=1):
        """A cell of ``values`` (median (min-max)), or ``not run``."""
        return cell(values, digits) if phase in self.ran else NOT_RUN

    def text(self, phase, text):
        return text if phase in self.ran else NOT_RUN

    def build(self):
        self.access()
        self.reaction()
        self.throughput()
        self.attack()
        self.startup()
        self.ssh()
        self.fsync()
        self.check_targets()
        return self.rows, self.targets

    # 1. time to access

    def access(self):
        r, c = self.r, self.c
        self.k_ms, self.f_ms = ms_list(r.get("knockd", [])), ms_list(r.get("fwknop", []))
        self.key_ms = ms_list(r.get("s2k_key", []))
        others = [med(self.k_ms), med(self.f_ms)]
        self.row("1. time to access, ms (sig2knock: saved key, --key-file)",
                 c("knockd", self.k_ms), c("fwknop", self.f_ms), c("sig2knock", self.key_ms),
                 ratio(med(self.key_ms), others))
        for label, key in (("password, cheap KDF n=2^10", "s2k_cheap"),
                           ("password, default scrypt n=2^15,r=8", "s2k_scrypt")):
            values = ms_list(r.get(key, []))
            self.row(f"1. time to access, ms (sig2knock: {label})", "", "",
                     c("sig2knock", values), ratio(med(values), others))
        kp, fp = ms_list(r.get("knockd_plain", [])), ms_list(r.get("fwknop_plain", []))
        sp = ms_list(r.get("s2k_plain", []))
        self.row("1. time to access, plain connect (as ssh would), ms (s2k: saved key)",
                 c("knockd", kp), c("fwknop", fp), c("sig2knock", sp),
                 ratio(med(sp), [med(kp), med(fp)]))
        cells = []
        for phase, key in (("knockd", "knockd_plain"), ("fwknop", "fwknop_plain"),
                           ("sig2knock", "s2k_plain")):
            records = r.get(key, [])
            cells.append(self.text(phase, f"{dropped_first_syn(records)}/{len(records)}"))
        self.row("1. ... plain connect: first SYN dropped, waited for retransmission", *cells)
        for label, key in (("knockd", "knockd"), ("fwknop", "fwknop"),
                           ("sig2knock (saved key)", "s2k_key"), ("sig2knock", "s2k_cheap")):
            raced = sum(1 for rec in r.get(key, []) if rec.get("attempts", 1) > 1)
            if raced:
                self.bench.notes.append(
                    f"{label}: in {raced}/{len(r[key])} fast-probe runs the first SYN arrived "
                    "before the rule and was dropped (the fast probe retries every 5 ms; the "
                    "plain-connect row shows what that costs a real ssh)")

    # 2. server reaction

    def reaction(self):
        r, c = self.r, self.c
        pooled = r.get("s2k_key", []) + r.get("s2k_cheap", []) + r.get("s2k_scrypt", [])
        self.parts = parts = s2k_breakdown(pooled)
        by_kind = {key: s2k_breakdown(r.get(key, []))
                   for key in ("s2k_key", "s2k_cheap", "s2k_scrypt")}
        self.row(f"2. server reaction first P1 -> P3 on the wire, ms (s2k runs of 1. pooled, "
                 f"n={len(pooled)})", "n/a", "n/a", c("sig2knock", parts["reaction"], 2))
        self.row("2. ... last knock SYN before the first P3 -> P3 (server side: capture, "
                 "session, firewall, listener), ms", "n/a", "n/a",
                 c("sig2knock", parts["knock_p3"], 2))
        self.row("2. ... final P2 -> P3 (grant step: firewall + listener), ms", "n/a", "n/a",
                 c("sig2knock", parts["last_p2_p3"], 2))

        def three(name, digits=1):
            if "sig2knock" not in self.ran:
                return NOT_RUN
            return " / ".join(cell(by_kind[key][name], digits)
                              for key in ("s2k_key", "s2k_cheap", "s2k_scrypt"))

        self.row("2. client rounds needed (key / cheap / scrypt)", "", "", three("rounds", 0))
        self.row("   breakdown: process start -> P1 on the wire, ms (key / cheap / scrypt)", "",
                 "", three("start_p1"))
        self.row("   breakdown: P3 on the wire -> client exited, ms", "", "",
                 c("sig2knock", parts["client_exit_ms"]))
        self.row("   breakdown: P3 on the wire -> echo received, ms", "", "",
                 c("sig2knock", parts["p3_echo"]))

    # 3. throughput

    def throughput(self):
        c, text = self.c, self.text
        tp = self.r.get("throughput", {})
        direct, proxy, socat = tp.get("direct"), tp.get("s2k_proxy"), tp.get("socat")
        self.row("3. throughput Gbit/s, 1 TCP stream 5 s x3 (knockd/fwknop: kernel path; s2k: "
                 "proxy)", c("throughput", direct, 2), c("throughput", direct, 2),
                 c("throughput", proxy, 2), ratio(med(proxy), [med(direct)], True))
        self.row("3. throughput via socat forwarder (reference), Gbit/s",
                 c("throughput", socat, 2), "", "",
                 ratio(med(proxy), [med(socat)], True) + " s2k/socat" if socat else "")
        for firewall in ("nftables", "iptables"):
            pairs = tp.get(f"nat_{firewall}") or {}
            label = (f"3. throughput s2k FORWARD_MODE=nat FIREWALL={firewall}, Gbit/s; "
                     f"direct/nat interleaved, {len(pairs.get('ratios', [])) or self.bench.pairs}"
                     " pairs x 5 s")
            if "skipped" in pairs or "failed" in pairs:
                why = "skipped (not accepted)" if "skipped" in pairs else "failed"
                self.row(label, "", "", why, "")
                continue
            ratios = pairs.get("ratios")
            self.row(label, c("throughput", pairs.get("direct"), 2),
                     c("throughput", pairs.get("direct"), 2), c("throughput", pairs.get("nat"), 2),
                     f"{cell(ratios, 2)} pair ratio" if ratios else
                     text("throughput", "n/a"))
        self.row("3. iperf3 cross-check direct / via socat, Gbit/s",
                 c("throughput", tp.get("iperf3_direct"), 2),
                 c("throughput", tp.get("iperf3_socat"), 2), "n/a (iperf3 needs 2 conns)", "")

    # 4. under attack, 5. many users

    def attack(self):
        r, c, text = self.r, self.c, self.text
        ka, fa, sa = r.get("knockd_attack", {}), r.get("fwknop_attack", {}), r.get("s2k_attack", {})
        ka_ms, fa_ms = ms_list(ka.get("records", [])), ms_list(fa.get("records", []))
        sa_ms = ms_list(sa.get("records", []))
        self.row("4. time to access under attack (20k junk UDP/s + 2k SYN/s), ms (s2k: cheap)",
                 c("knockd", ka_ms), c("fwknop", fa_ms), c("sig2knock", sa_ms),
                 ratio(med(sa_ms), [med(ka_ms), med(fa_ms)]))
        self.row("4. access under attack, runs ok",
                 text("knockd", f"{len(ka_ms)}/{len(ka.get('records', []))}"),
                 text("fwknop", f"{len(fa_ms)}/{len(fa.get('records', []))}"),
                 text("sig2knock", f"{len(sa_ms)}/{len(sa.get('records', []))}"))

        def num(value, fmt):
            return fmt.format(value) if value is not None else "n/a"

        self.row("4. daemon CPU % during attack", text("knockd", num(ka.get("cpu"), "{:.0f}%")),
                 text("fwknop", num(fa.get("cpu"), "{:.0f}%")),
                 text("sig2knock", num(sa.get("cpu"), "{:.0f}%")))
        cells = []
        for phase, idle, attack in (("knockd", "knockd_rss_idle", ka),
                                    ("fwknop", "fwknop_rss_idle", fa),
                                    ("sig2knock", "s2k_rss_idle", sa)):
            cells.append(text(phase, f"{num(r.get(idle), '{:.1f}')} / "
                                     f"{num(attack.get('rss'), '{:.1f}')}"))
        self.row("4. daemon RSS MB: idle / end of attack", *cells)
        pf = r.get("s2k_p1_flood", {})
        pf_ms = ms_list(pf.get("records", []))
        flood = pf.get("flood", {})
        rate = (flood.get("sent", 0) / flood["elapsed"]) if flood.get("elapsed") else None
        self.row("4. time to access under a P1 flood (P1s that cost the daemon its full opening,"
                 f" {num(rate, '{:.0f}')}/s from 80 addresses), ms (s2k: saved key)",
                 text("knockd", "n/a"), text("fwknop", "n/a"), c("sig2knock", pf_ms))
        self.row("4. ... runs ok / daemon CPU % / CPU per P1 opened (in-process), ms",
                 text("knockd", "n/a"), text("fwknop", "n/a"),
                 text("sig2knock", f"{len(pf_ms)}/{len(pf.get('records', []))} / "
                                   f"{num(pf.get('cpu'), '{:.0f}%')} / "
                                   f"{num(pf.get('ms_per_p1'), '{:.2f}')}"))
        kd, sd = r.get("knockd_dup", []), r.get("s2k_dup", [])
        self.row("4. duplicated knock (knockd: 1,1,2,3; s2k: every knock twice), access",
                 text("knockd", f"{sum(1 for x in kd if x.get('ms'))}/{len(kd)}"),
                 "n/a (single packet)",
                 text("sig2knock", f"{sum(1 for x in sd if x.get('result') == 'echo')}/{len(sd)}"))
        many = r.get("s2k_many", {})
        self.row(f"5. {MANY} clients at once on distinct addresses: all ok / last access ms",
                 "n/a", "n/a",
                 text("sig2knock", f"{many.get('ok', 0)}/{MANY}, last "
                                   f"{num(many.get('last_ms'), '{:.0f}')} ms, median "
                                   f"{num(many.get('median_ms'), '{:.0f}')} ms"))
        self.row("5. ... rounds / daemon RSS MB / daemon CPU s", "", "",
                 text("sig2knock", f"{cell(many.get('rounds', []), 0)} / "
                                   f"{num(many.get('rss'), '{:.1f}')} / "
                                   f"{num(many.get('cpu_s'), '{:.2f}')}"))

    # 6. client start-up

    def startup(self):
        r, c = self.r, self.c
        kf, ff = first_packet_ms(r.get("knockd", []), 6), first_packet_ms(r.get("fwknop", []), 17)
        sf = s2k_breakdown(r.get("s2k_key", []))["start_p1"]
        self.row("6. process start -> first packet on the wire, ms (s2k: saved key)",
                 c("knockd", kf), c("fwknop", ff), c("sig2knock", sf),
                 ratio(med(sf), [med(kf), med(ff)]))
        self.row("6. `sig2knockc --help` wall time, ms", "", "",
                 c("startup", r.get("help_ms", [])))

    # 7. a real ssh login

    def ssh(self):
        times = self.r.get("ssh", {}).get("times", {})
        direct = med(times.get("direct", []))

        def over_direct(way):
            value = med(times.get(way, []))
            if "ssh" not in self.ran:
                return NOT_RUN
            return f"{value / direct:.2f}x" if value is not None and direct else "n/a"

        logins = self.r.get("ssh", {}).get("logins", "?")
        self.row(f"7. real ssh login `ssh ... true`, {logins} each, interleaved, ms (knockd: "
                 "knock && ssh; fwknop: fwknop && ssh; s2k: ProxyCommand sig2knockc --stdio NAME)",
                 self.c("ssh", times.get("knockd", [])), self.c("ssh", times.get("fwknop", [])),
                 self.c("ssh", times.get("sig2knock", [])),
                 ratio(med(times.get("sig2knock", [])),
                       [med(times.get("knockd", [])), med(times.get("fwknop", []))]))
        self.row("7. ... the same login direct (sshd's open port, no knock), ms",
                 self.c("ssh", times.get("direct", [])), self.c("ssh", times.get("direct", [])),
                 self.c("ssh", times.get("direct", [])))
        self.row("7. ... login through the tool / direct login (medians)", over_direct("knockd"),
                 over_direct("fwknop"), over_direct("sig2knock"))

    # 8. the replay cache's durable writes under a burst

    def fsync(self):
        figures = self.r.get("fsync", {})
        for delay, label in (("0", "the lab's disk"),
                             (str(FSYNC_DELAY_MS), f"every fsync {FSYNC_DELAY_MS} ms slower")):
            bursts = figures.get(delay, [])
            ok = sum(b["ok"] for b in bursts)
            self.row(f"8. {MANY} logins at once x{len(bursts) or '?'}, {label}: ok / median / "
                     "last access ms (medians of the bursts)", "n/a", "n/a",
                     self.text("fsync", f"{ok}/{MANY * len(bursts)} / "
                               f"{cell([b['median_ms'] for b in bursts if b['median_ms']], 0)} / "
                               f"{cell([b['last_ms'] for b in bursts if b['last_ms']], 0)}"))
            self.row(f"8. ... {label}: accepted control messages per second", "", "",
                     self.c("fsync", [b["per_second"] for b in bursts if b["per_second"]], 0))

    # targets

    def check_targets(self):
        missing = [p for p in ("knockd", "fwknop", "sig2knock") if p not in self.ran]
        if missing:
            self.targets.append(f"time to access: not checked ({', '.join(missing)} not run)")
        elif None in (med(self.key_ms), med(self.k_ms), med(self.f_ms)):
            self.targets.append("time to access: not checked (a tool has no successful run)")
        else:
            best = min(med(self.k_ms), med(self.f_ms))
            met = med(self.key_ms) < best
            self.targets.append(
                f"time to access (sig2knock saved key lowest of the three): sig2knock "
                f"{med(self.key_ms):.1f} ms vs knockd {med(self.k_ms):.1f} ms, fwknop "
                f"{med(self.f_ms):.1f} ms -> {'MET' if met else 'NOT MET'}")
        reaction = self.parts["knock_p3"]
        if "sig2knock" not in self.ran:
            self.targets.append("server reaction ~2 ms: not checked (sig2knock not run)")
        elif not reaction:
            self.targets.append("server reaction ~2 ms: not checked (no run with P3 in pcap)")
        else:
            met = med(reaction) <= REACTION_TARGET_MS
            self.targets.append(
                f"server reaction ~2 ms (last knock SYN -> P3, server side, <= "
                f"{REACTION_TARGET_MS:.1f}): median {med(reaction):.2f} ms -> "
                f"{'MET' if met else 'NOT MET'}")
        self.ssh_targets()
        tp = self.r.get("throughput", {})
        for firewall in ("nftables", "iptables"):
            name = f"FORWARD_MODE=nat within 10% of direct, FIREWALL={firewall}"
            pairs = tp.get(f"nat_{firewall}") or {}
            if "throughput" not in self.ran:
                self.targets.append(f"{name}: not checked (throughput not run)")
            elif not pairs.get("ratios"):
                self.targets.append(f"{name}: not checked (no pair measured)")
            else:
                value = med(pairs["ratios"])
                self.targets.append(
                    f"{name}: median pair ratio {value:.2f} (>= {NAT_TARGET:.2f}; medians nat "
                    f"{med(pairs['nat']):.2f} / direct {med(pairs['direct']):.2f} Gbit/s) -> "
                    f"{'MET' if value >= NAT_TARGET else 'NOT MET'}")


    def ssh_targets(self):
        times = self.r.get("ssh", {}).get("times", {})
        through, direct = med(times.get("sig2knock", [])), med(times.get("direct", []))
        name = f"ssh login through sig2knock <= {SSH_TARGET:.2f}x a direct one"
        if "ssh" not in self.ran:
            self.targets.append(f"{name}: not checked (ssh not run)")
        elif through is None or not direct:
            self.targets.append(f"{name}: not checked (no successful login)")
        else:
            self.targets.append(
                f"{name}: {through:.1f} ms vs {direct:.1f} ms = {through / direct:.2f}x -> "
                f"{'MET' if through / direct <= SSH_TARGET else 'NOT MET'}")
        first = s2k_breakdown(self.r.get("s2k_key", []))["start_p1"]
        name = f"process start -> first packet <= {FIRST_PACKET_TARGET_MS:.0f} ms (saved key)"
        if not first:
            self.targets.append(f"{name}: not checked (no sig2knock run in pcap)")
        else:
            self.targets.append(
                f"{name}: median {med(first):.1f} ms -> "
                f"{'MET' if med(first) <= FIRST_PACKET_TARGET_MS else 'NOT MET'}")


def render(bench):
    rows, targets = Table(bench).build()
    header = ("metric", "knockd", "fwknop", "sig2knock", "s2k / best other")
    widths = [max(len(str(x[i])) for x in rows + [header]) for i in range(5)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    not_run = [p for p in PHASES if p not in bench.phases_run]
    out = [f"runs={bench.runs} (attack runs={bench.attack_runs}, plain-connect runs="
           f"{bench.plain_runs}, nat pairs={bench.pairs}); cells: median (min-max); "
           f"nproc={os.cpu_count()}, kernel {os.uname().release}",
           f"phases: {','.join(bench.phases_run)}"
           + (f" (not run: {','.join(not_run)})" if not_run else ""), ""] + lines
    imports = bench.results.get("importtime")
    if imports:
        out += ["", "sig2knockc top-level imports (cumulative ms, -X importtime): " +
                ", ".join(f"{name} {ms:.1f}" for name, ms in imports)]
    for label, key in (("knockd", "knockd_attack"), ("fwknop", "fwknop_attack"),
                       ("sig2knock", "s2k_attack")):
        if bench.results.get(key, {}).get("noise"):
            out.append(f"noise sent during {label} attack runs: {bench.results[key]['noise']}")
    out += ["", "targets:"] + [f"  {t}" for t in targets]
    if bench.notes:
        out += ["", "notes:"] + [f"  {n}" for n in bench.notes]
    if bench.failures:
        out += ["", "failures:"] + [f"  {f}" for f in bench.failures]
    return "\n".join(out)
