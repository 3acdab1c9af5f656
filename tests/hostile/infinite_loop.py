"""Spin forever."""
while True:
    pass
