"""
pcap on an interface (run inside a namespace): one line per packet to a file,
``ts proto src sport dst dport flags len``, kernel timestamps. Bounded in time and packets;
ends on SIGTERM. Prints ``ready`` once the capture is open.
"""
import signal
import socket
import struct
import sys
import time

import pcapy

iface, bpf, out_path, max_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
MAX_PACKETS = 2_000_000
stop = False


def on_term(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
cap = pcapy.open_live(iface, 128, 0, 20)
cap.setfilter(bpf)
link = cap.datalink()
offset = 14 if link == 1 else 16  # Ethernet or Linux cooked
print("ready", flush=True)
deadline = time.monotonic() + max_seconds
count = 0
with open(out_path, "w") as out:
    while not stop and time.monotonic() < deadline and count < MAX_PACKETS:
        try:
            header, data = cap.next()
        except pcapy.PcapError:
            continue
        if header is None or not data:
            continue
        sec, usec = header.getts()
        ip = data[offset:]
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        proto = ip[9]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        sport = dport = flags = 0
        if proto in (6, 17) and len(ip) >= ihl + 4:
            sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
            if proto == 6 and len(ip) >= ihl + 14:
                flags = ip[ihl + 13]
        length = struct.unpack("!H", ip[2:4])[0]
        out.write(f"{sec + usec / 1e6:.6f} {proto} {src} {sport} {dst} {dport} {flags} {length}\n")
        out.flush()
        count += 1
