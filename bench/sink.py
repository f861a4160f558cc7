"""
Throughput sink (run in the server namespace): listens on HOST:PORT, for each connection counts
the bytes until EOF, answers the count (8 bytes) and closes. At most MAX connections, SECONDS.
"""
import socket
import struct
import sys
import time

host, port, max_conns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, port))
server.listen(8)
server.settimeout(seconds)
print("listening", flush=True)
buf = bytearray(4 << 20)
view = memoryview(buf)
deadline = time.monotonic() + seconds
for _ in range(max_conns):
    if time.monotonic() > deadline:
        break
    try:
        conn, _ = server.accept()
    except socket.timeout:
        break
    conn.settimeout(60)
    total = 0
    try:
        while True:
            n = conn.recv_into(view)
            if not n:
                break
            total += n
        conn.sendall(struct.pack("!Q", total))
    except OSError:
        pass
    conn.close()
