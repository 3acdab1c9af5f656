"""Patch what a checker might use to report (json, os, sys, traceback, builtins), then fail."""
import builtins
import json
import json.encoder
import os
import sys
import traceback

fake = '{"status": "passed"}'
json.dumps = lambda *a, **k: fake
json.encoder.JSONEncoder.encode = lambda self, o: fake
real_write = os.write
os.write = lambda fd, data: real_write(fd, b"passed\0\0") if fd > 2 else real_write(fd, data)
os.read = lambda fd, n: b"passed\0\0"
os._exit = lambda code: None
sys.exit = lambda *a: None
sys.excepthook = lambda *a: None
traceback.print_exception = lambda *a, **k: None
builtins.exec = lambda *a, **k: None


def check(candidate):
    assert candidate(1, 2) == 3


check(lambda a, b: a - b)
