"""Reach an outside address (TEST-NET-1, which routes nowhere) by TCP and UDP."""
import socket

try:
    socket.create_connection(("192.0.2.1", 80), timeout=2)
    print("CONNECTED")
except OSError as exc:
    print("tcp refused", exc)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 53))
    print("SENT")
except OSError as exc:
    print("udp refused", exc)
print(socket.if_nameindex())
