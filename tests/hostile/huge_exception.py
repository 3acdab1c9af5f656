"""Fail with a 30 MB exception message and a 1 MB exception class name."""
raise type("E" * (1 << 20), (Exception,), {})("x" * (30 << 20))
