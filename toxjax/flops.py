"""The machine's peak FLOP/s, for MFU: measured on a CPU, the datasheet on an accelerator.

MFU = model FLOPs per second / peak. The model's FLOPs per token come from
`ModelConfig.train_flops_per_token` (6N + 12 * L * H * Q * T); this module gives the
denominator. `toxjax train`, `toxjax demo` and the benchmarks all read it from here.

A CPU has no datasheet number that its matmuls reach, so its peak is measured: the best
of several jitted fp32 matmuls (a busy host measures low, so callers that report over
time keep the best they have seen).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

PEAK_FLOPS = {  # dense bf16 peak per device (datasheets); a CPU is measured instead
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def measure_peak_flops(n: int = 1024, repeats: int = 10, dtype=jnp.float32, device=None) -> float:
    """Best-of-`repeats` FLOP/s of a jitted `[n, n] @ [n, n]` matmul on one device.

    Args:
      n: matrix size (1024 fp32 on a CPU; 8192 bf16 shows an accelerator's matmul rate).
      repeats: timed runs after one warm-up run; the fastest counts.
      dtype: the matmul's dtype.
      device: where it runs (default: the first device).
    """
    a = jax.device_put(jnp.ones((n, n), dtype), device or jax.devices()[0])
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops_per_device() -> float:
    """One device's peak: measured fp32 on a CPU, the datasheet bf16 number elsewhere
    (NaN for a device kind not in `PEAK_FLOPS`)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measure_peak_flops()
    return PEAK_FLOPS.get(device.device_kind, float("nan"))
