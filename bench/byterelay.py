"""A plain byte relay, the floor of any relay: ``python -m bench.byterelay LISTEN TARGET``.

Listens on 127.0.0.1:LISTEN; every connection gets its own connection to
127.0.0.1:TARGET and two threads copying bytes, one each way, with no
parsing and no buffering beyond one read.  It runs until killed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading

CHUNK = 256 * 1024


def pump(source: socket.socket, sink: socket.socket) -> None:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while count := source.recv_into(buffer):
            sink.sendall(view[:count])
    except OSError:
        pass
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def serve(listen_port: int, target_port: int) -> None:
    listener = socket.create_server(("127.0.0.1", listen_port), backlog=64)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
