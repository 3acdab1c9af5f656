"""Open files until the limit."""
opened = []
try:
    while True:
        opened.append(open("/dev/null"))
except OSError as exc:
    print("opened", len(opened), exc.errno)
