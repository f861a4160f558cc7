"""
Bounded attack noise (run in the intruder namespace): junk UDP datagrams to HOST:UDP_PORT at
about UDP_RATE per second and TCP SYNs (non-blocking connects closed at once) to random ports
at about SYN_RATE per second, for at most SECONDS or until SIGTERM. Sends only to HOST, which
the driver takes from the lab (198.18.0.0/15). Prints ``ready``, then one summary line.
"""
import os
import random
import signal
import socket
import sys
import time

host, udp_port, udp_rate, syn_rate, seconds = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
assert host.startswith("198.18.") or host.startswith("198.19."), host
MAX_PACKETS = int((udp_rate + syn_rate) * seconds * 1.2) + 100
stop = False
signal.signal(signal.SIGTERM, lambda *_: globals().__setitem__("stop", True))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
junk = [os.urandom(random.randint(20, 200)) for _ in range(256)]
rng = random.Random()
print("ready", flush=True)
start = time.monotonic()
sent_udp = sent_syn = 0
tick = 0.005
while not stop and time.monotonic() - start < seconds and sent_udp + sent_syn < MAX_PACKETS:
    elapsed = time.monotonic() - start
    want_udp = int(elapsed * udp_rate) + 1
    while sent_udp < want_udp:
        try:
            udp.sendto(junk[sent_udp & 255], (host, udp_port))
        except OSError:
            pass
        sent_udp += 1
    want_syn = int(elapsed * syn_rate) + 1
    while sent_syn < want_syn:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect_ex((host, rng.randint(1024, 65535)))
        except OSError:
            pass
        s.close()
        sent_syn += 1
    time.sleep(tick)
elapsed = time.monotonic() - start
print(f"udp={sent_udp} syn={sent_syn} seconds={elapsed:.2f} "
      f"udp_pps={sent_udp / elapsed:.0f} syn_pps={sent_syn / elapsed:.0f}", flush=True)
