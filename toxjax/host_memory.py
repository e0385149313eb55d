"""Keep XLA:CPU's per-step scratch memory mapped between steps (glibc hosts without an
accelerator).

XLA:CPU allocates the temporaries of one execution of a jitted step (activations,
logits, their gradients: 0.3-0.5 GB for the demo model) as one block, every step.
glibc serves a block that large with `mmap` and gives it back with `munmap`, so every
step page-faults the whole block in again: about 100k minor faults and 25-40% of the
demo step's CPU time in the kernel (docs/benchmarks.md). With one malloc arena, no
`mmap` for large blocks and a 1 GiB trim threshold, the freed block stays in the heap
and the next step reuses it. The numbers are the same; only where the bytes live
changes.

It must run before any other thread allocates (before TensorFlow or XLA start their
thread pools): the `toxjax` command calls it first thing for `train` and `demo`. On an
accelerator host it does nothing: there the step's memory is the device's, and one
malloc arena could slow a many-threaded input pipeline.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

# glibc's mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 1 << 30

# TPU v4 (accel), TPU v5e / v6e (vfio), NVIDIA, AMD.
ACCELERATOR_DEVICES = ("/dev/accel0", "/dev/vfio/0", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")


def accelerator_present() -> bool:
    """True when JAX may find a TPU or GPU here (a device file exists) and
    `JAX_PLATFORMS` does not restrict it to the CPU."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    return any(os.path.exists(p) for p in ACCELERATOR_DEVICES)


def keep_freed_memory() -> bool:
    """Tells glibc to keep large freed blocks for reuse (see the module docstring).

    Returns:
      True if the settings took; False on an accelerator host, off Linux, or with a C
      library without `mallopt`.
    """
    if not sys.platform.startswith("linux") or accelerator_present():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (M_ARENA_MAX, 1),
            (M_MMAP_MAX, 0),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
    )
    logging.debug("host_memory: glibc keeps freed blocks for reuse: %s", ok)
    return ok
