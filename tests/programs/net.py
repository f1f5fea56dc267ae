#!/usr/bin/env python3
"""Real sockets across a checkpoint: `net.py tcp DIR` or `net.py udp DIR`.

tcp: a listening server (this process) and a client (its forked child) on one connection. The
client sends a counter, the server echoes it, the client appends each echo to DIR/count and
exits at once if the connection breaks (writing DIR/broken), so a count that goes on after a
restore is the same connection carried over. The server keeps accepting: a new connection gets
"hello <n>" with n the number of connections it has served.
udp: a bound UDP socket answering each datagram with "<counter> <datagram>"; the counter lives
in memory only. Both write their port to DIR/port.
"""

import os
import socket
import sys
import time
from pathlib import Path


def tcp(out: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    if os.fork() == 0:
        client(port, out)
    (out / "port").write_text(str(port))
    conn, _ = server.accept()
    served = 1
    server.settimeout(0.01)
    conn.settimeout(0.01)
    while True:
        try:
            data = conn.recv(64)
            if not data:
                (out / "server-broken").write_text("eof")
                return
            conn.sendall(data)
        except socket.timeout:
            pass
        try:
            extra, _ = server.accept()
            served += 1
            extra.sendall(f"hello {served}\n".encode())
            extra.close()
        except socket.timeout:
            pass


def client(port: int, out: Path) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    value = 0
    with open(out / "count", "a") as f:
        while True:
            value += 1
            try:
                sock.sendall(f"{value}\n".encode())
                echo = sock.recv(64)
            except OSError as exc:
                (out / "broken").write_text(str(exc))
                os._exit(1)
            if not echo:
                (out / "broken").write_text("eof")
                os._exit(1)
            f.write(echo.decode())
            f.flush()
            time.sleep(0.05)


def udp(out: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    (out / "port").write_text(str(sock.getsockname()[1]))
    counter = 0
    while True:
        data, peer = sock.recvfrom(512)
        counter += 1
        sock.sendto(f"{counter} ".encode() + data, peer)


if __name__ == "__main__":
    {"tcp": tcp, "udp": udp}[sys.argv[1]](Path(sys.argv[2]))
