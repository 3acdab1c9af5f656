"""Use no CPU at all, just never finish."""
import time

time.sleep(10_000)
