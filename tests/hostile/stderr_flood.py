"""Write to stderr forever."""
import sys

while True:
    sys.stderr.write("y" * 65536)
