"""The wall-time measurement the benchmarks share (imported by the scripts beside it: a script's own
folder is on Python's path when it runs as `python bench/<script>.py`)."""

import statistics
import time

import torch


def median_seconds(function, device: str, repeats: int, warmup: int = 0) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones: single timings on a shared CPU
    vary by 10-20%, and a first call pays one-off costs (allocations, kernel selection)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)
