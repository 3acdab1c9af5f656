"""Fail with an exception whose message and class name are objects of the program: a str
subclass whose methods write reports, and a __str__ that writes reports and returns a huge text."""
import os


class Sly(str):
    def encode(self, *args, **kwargs):
        return b"\0" * 16 + b"P"

    def __getitem__(self, index):
        for fd in range(3, 32):
            try:
                os.write(fd, b"P")
            except OSError:
                pass
        return self

    def __radd__(self, other):
        print("FORGED with", other)
        return other


class Tricky(Exception):
    def __str__(self):
        for fd in range(3, 32):
            try:
                os.write(fd, b"\0" * 16 + b"P")
            except OSError:
                pass
        return Sly("x" * 1000)


raise Tricky()
