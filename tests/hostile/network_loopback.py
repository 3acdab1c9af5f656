"""Connect to a server the host runs on 127.0.0.1."""
import json
import socket
import sys

P = json.loads(sys.stdin.read())
try:
    socket.create_connection(("127.0.0.1", P["port"]), timeout=2).sendall(b"hello from the sandbox")
    print("CONNECTED")
except OSError as exc:
    print("refused", exc)
