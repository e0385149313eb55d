"""The machine's limit, for MFU: the datasheet peak of accelerators, a measured peak on CPU.

MFU = model FLOPs per second / peak FLOPs. Model FLOPs per token are
`ModelConfig.train_flops_per_token` (6N + 12 * L * H * Q * T). Training, the demo and the
benchmarks all read the peak here.
"""

from __future__ import annotations

import time

import jax

PEAK_FLOPS = {  # dense bf16 peak per device, for MFU; CPU is measured instead
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


def measure_peak_flops(n: int = 1024, repeats: int = 10) -> float:
    """Best-of-N fp32 matmul FLOP/s of one device (the CPU's practical peak)."""
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops_per_device() -> float:
    """The datasheet peak of this accelerator (NaN when unknown), or a measured CPU peak."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return measure_peak_flops()
    return PEAK_FLOPS.get(device.device_kind, float("nan"))
