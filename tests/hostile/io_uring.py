"""Create an io_uring instance (and try the other exploit favourites: userfaultfd, perf events, bpf)."""
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
if libc.syscall(425, 8, params) >= 0:  # io_uring_setup
    print("CREATED io_uring")
if libc.syscall(323, 0) >= 0:  # userfaultfd
    print("CREATED userfaultfd")
attr = ctypes.create_string_buffer(128)
attr[4:8] = (128).to_bytes(4, "little")  # size; type 0 (hardware), config 0 (cycles)
if libc.syscall(298, attr, 0, -1, -1, 0) >= 0:  # perf_event_open
    print("CREATED perf event")
if libc.syscall(321, 0, ctypes.create_string_buffer(128), 128) >= 0:  # bpf(BPF_MAP_CREATE)
    print("CREATED bpf map")
print("tried")
