"""Allocate memory until something gives."""
blocks = []
while True:
    blocks.append(bytearray(50 << 20))
