"""Print terminal control sequences (clipboard write, title, screen clear, carriage return, bell)
on stdout and stderr: they must come back as data, byte for byte."""
import sys

ESCAPES = "\x1b]52;c;cHduZWQ=\x07\x1b]0;owned\x07\x1b[2J\x1b[H\r# hidden\x08\x00\x9b31m\x07end"
sys.stdout.write(ESCAPES)
sys.stderr.write(ESCAPES)
