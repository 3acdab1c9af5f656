"""Store a secret in the kernel keyrings, which outlive every process of the job."""
import ctypes
import json
import platform
import sys

P = json.loads(sys.stdin.read())
libc = ctypes.CDLL(None, use_errno=True)
add_key = {"x86_64": 248, "aarch64": 217}[platform.machine()]
secret = P["job_secret"].encode()
for keyring in (-4, -3, -2, -1):  # user, session, process, thread keyrings
    if libc.syscall(add_key, b"user", b"leak", secret, len(secret), keyring) >= 0:
        print("STORED in", keyring)
    else:
        print("refused", keyring, ctypes.get_errno())
