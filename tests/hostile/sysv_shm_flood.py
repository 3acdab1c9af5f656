"""Hold 400 MB in System V shared memory segments that no process has attached."""
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
size = 100 << 20
for _ in range(4):
    shm = libc.shmget(0, size, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
    if shm < 0:
        print("refused shmget", ctypes.get_errno())
        break
    address = libc.shmat(shm, None, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        print("refused shmat", ctypes.get_errno())
        break
    ctypes.memset(address, 1, size)
    libc.shmdt(ctypes.c_void_p(address))
print("hoarded")
