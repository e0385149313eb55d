"""Ahead-of-time compile check: will this training config fit on that TPU slice?

    toxjax compile-check --gin_file=experiments/inst_1_3b.gin --topology=v4-32

Lowers and compiles the real train step (same model, optimizer, mesh, shardings and
batch as `toxjax train` would use) against compile-only TPU devices from libtpu
(`jax.experimental.topologies`), on any machine and without TPU hardware. Nothing is
allocated: the state and batch are abstract. Prints XLA's per-device memory analysis
and exits 1 when the step needs more than the chip's HBM, so a config that will not fit
fails before anyone rents a pod.

Needs libtpu: `pip install 'toxjax[tpu]'` (it is `jax[tpu]`). `--topology` takes a Cloud
TPU accelerator type (`v4-32`, `v5p-128`, `v5litepod-16` / `v5e-16`, `v6e-64`) or a
libtpu topology name (`v4:2x2x4`). The REQUIRED run macros (MODEL_DIR, TASK, ...) need
not be bound: the check never reads them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
import warnings
from collections.abc import Sequence

GIB = 1024**3

# Per generation: HBM per JAX device (a megacore chip on v4 / v5p), whether the
# accelerator-type number counts TensorCores (2 per chip) or chips, and the torus rank.
_GENERATIONS = {
    #        libtpu name, HBM GiB, cores/chip in the type's number, dims, chip config
    "v4": ("v4", 32, 2, 3, "megacore"),
    "v5p": ("v5p", 95, 2, 3, "megacore"),
    "v5e": ("v5e", 16, 1, 2, "default"),
    "v5litepod": ("v5e", 16, 1, 2, "default"),
    "v6e": ("v6e", 32, 1, 2, "default"),
}


class DoesNotFitError(RuntimeError):
    """XLA refused to compile the step: it needs more memory than the chip's HBM."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: `name` is libtpu's topology name (e.g. "v4:2x2x4")."""

    accelerator: str
    name: str
    chip_config: str
    num_devices: int
    hbm_bytes: int


def _torus_shape(chips: int, rank: int) -> list[int]:
    """Cloud TPU's slice shapes: 4 chips = 2x2(x1), then double the last smallest dim
    (v4-32 = 16 chips = 2x2x4, 64 chips = 4x4x4; v5e-32 = 4x8)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips: TPU slices have a power-of-two chip count")
    dims = [1] * rank
    while math.prod(dims) < chips:
        smallest = min(dims)
        i = max(j for j, d in enumerate(dims) if d == smallest)
        if rank == 3 and math.prod(dims) < 4:  # the 4-chip host is 2x2x1
            i = dims.index(1)
        dims[i] *= 2
    return dims


def parse_topology(text: str) -> Topology:
    """`v4-32`, `v5p-128`, `v5litepod-16`, `v5e-16`, `v6e-64` or `v4:2x2x4` -> Topology."""
    m = re.fullmatch(r"(v\d+[a-z]*)([-:])([\dx]+)", text.strip())
    if not m or m.group(1) not in _GENERATIONS:
        raise ValueError(
            f"--topology={text!r}: expected an accelerator type such as v4-32, "
            f"v5p-128, v5litepod-16, v6e-64 or a topology such as v4:2x2x4 "
            f"(generations: {', '.join(_GENERATIONS)})"
        )
    gen, sep, size = m.groups()
    lib_name, hbm_gib, per_chip, rank, chip_config = _GENERATIONS[gen]
    if sep == ":":
        dims = [int(d) for d in size.split("x")]
        if len(dims) != rank:
            raise ValueError(f"--topology={text!r}: {gen} slices have {rank} dimensions")
    else:
        if not size.isdigit() or int(size) % per_chip:
            raise ValueError(
                f"--topology={text!r}: the number after {gen}- counts "
                f"{'TensorCores (2 per chip)' if per_chip == 2 else 'chips'}"
            )
        dims = _torus_shape(int(size) // per_chip, rank)
    return Topology(
        accelerator=text,
        name=f"{lib_name}:{'x'.join(map(str, dims))}",
        chip_config=chip_config,
        num_devices=math.prod(dims),
        hbm_bytes=hbm_gib * GIB,
    )


def libtpu_available() -> bool:
    return (
        bool(os.environ.get("TPU_LIBRARY_PATH")) or importlib.util.find_spec("libtpu") is not None
    )


def tpu_devices(topology: Topology) -> list:
    """Compile-only TPU devices of the slice (needs libtpu, not TPU hardware)."""
    if not libtpu_available():
        raise RuntimeError(
            "compile-check needs libtpu to compile for TPU: install it with "
            "`pip install 'toxjax[tpu]'` (jax[tpu], same jax version)"
        )
    # Compile-only: no device is opened, so do not take libtpu's one-process lock (a
    # CPU jax process that loaded libtpu may hold it) nor ask for a TPU VM's metadata.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    from jax.experimental import topologies

    return list(
        topologies.get_topology_desc(
            platform="tpu", topology_name=topology.name, chip_config_name=topology.chip_config
        ).devices
    )


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-device bytes from `compiled.memory_analysis()`.

    `peak_bytes` = arguments + outputs - aliased (the donated state is reused for the
    new state) + temporaries + code: what the step holds at once.
    """

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int

    @property
    def peak_bytes(self) -> int:
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.code_bytes
        )

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hbm_bytes


@dataclasses.dataclass(frozen=True)
class CheckResult:
    topology: Topology
    memory: MemoryReport
    params: int
    mesh: dict
    batch_size: int
    seq_len: int
    attention: str = "xla"  # the attention implementation compiled in
    attention_fallbacks: tuple[str, ...] = ()  # why the preferred kernels were skipped


def _spec():
    """The `train_spec.TrainSpec` of the parsed gin config: `toxjax train`'s resolver, on
    the arguments gin would pass to `train` (MODEL_DIR and the corpus may stay unbound:
    the task is only needed when `ModelConfig.vocab_size` is None)."""
    from toxjax import gin_utils, train_spec
    from toxjax import train as train_lib
    from toxjax.data import DataConfig

    args = gin_utils.bound_arguments(train_lib.train, train_spec.STEP_ARGUMENTS)
    data = gin_utils.bound_arguments(DataConfig, ["sequence_length"])
    task = None
    if args["model_config"].vocab_size is None:
        try:
            task = gin_utils.bound_arguments(DataConfig, ["mixture_or_task_name"])[
                "mixture_or_task_name"
            ]
        except Exception as e:  # an unbound REQUIRED macro (the corpus), a failing task
            raise ValueError(
                f"ModelConfig.vocab_size is None and the task is not known here ({gin_utils.message(e)}); "
                "bind ModelConfig.vocab_size (e.g. --gin.ModelConfig.vocab_size=50304) for the check"
            ) from None
    return train_spec.resolve(**args, sequence_length=int(data["sequence_length"]), task=task)


def build_step(devices: Sequence):
    """The train step `toxjax train` would run for the parsed gin config, on `devices`
    (built by the same resolver and `steps.build_train_step`; nothing is allocated or
    compiled)."""
    return _spec().build(devices)


def check(topology: Topology, devices: Sequence | None = None) -> CheckResult:
    """Compiles the gin-configured train step for `topology` (gin must be parsed)."""
    import jax

    from toxjax import attention as attn

    if devices is None:
        # A kernel no TPU runs is a config error, reported before libtpu is needed.
        attn.candidates(_spec().model_config.attention, "tpu")
    ts = build_step(tpu_devices(topology) if devices is None else devices)
    mesh = ts.mesh
    # The step is traced under the TPU mesh, so "auto" resolves for the TPU (the
    # attention seam reads the platform off the mesh's devices), not this host.
    order = attn.candidates(ts.model.config.attention, mesh.devices.flat[0].platform)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", attn.AttentionFallbackWarning)
        lowered = ts.lower()
    fallbacks = []
    for w in caught:
        if issubclass(w.category, attn.AttentionFallbackWarning):
            fallbacks.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    attention = fallbacks[-1].rsplit("using ", 1)[-1] if fallbacks else order[0]
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise DoesNotFitError(
            f"the train step does not fit on {topology.accelerator} ({topology.name}): "
            f"{str(e).splitlines()[0]}\n{_HOW_TO_FIT}"
        ) from None
    m = compiled.memory_analysis()
    memory = MemoryReport(
        m.argument_size_in_bytes,
        m.output_size_in_bytes,
        m.alias_size_in_bytes,
        m.temp_size_in_bytes,
        m.generated_code_size_in_bytes,
        topology.hbm_bytes,
    )
    params = sum(math.prod(x.shape) for x in jax.tree.leaves(ts.abstract_state.params))
    return CheckResult(
        topology,
        memory,
        params,
        dict(mesh.shape),
        ts.batch_size,
        ts.seq_len,
        attention,
        tuple(fallbacks),
    )


_HOW_TO_FIT = (
    "To fit: shard more (gin_configs/mesh/fsdp.gin or fsdp_tensor4.gin), "
    "rematerialise (ModelConfig.remat = 'full'), cut the per-step activations "
    "(train.grad_accum_steps = 2, 4, ...), or use a larger slice."
)


def format_report(r: CheckResult) -> str:
    m, gib = r.memory, lambda b: f"{b / GIB:.2f} GiB"
    lines = [
        f"topology {r.topology.accelerator} ({r.topology.name}, {r.topology.num_devices} "
        f"devices, {gib(r.topology.hbm_bytes)} HBM each); model {r.params / 1e9:.3f}B params; "
        f"mesh {r.mesh}; batch {r.batch_size} x {r.seq_len}; attention {r.attention}",
        *(f"  ({reason})" for reason in r.attention_fallbacks),
        "per-device memory:",
        f"  arguments    {gib(m.argument_bytes):>12}  (state + batch shard)",
        f"  outputs      {gib(m.output_bytes):>12}",
        f"  aliased      {gib(m.alias_bytes):>12}  (donated state, counted once)",
        f"  temporaries  {gib(m.temp_bytes):>12}  (activations, gradients, optimizer update)",
        f"  code         {gib(m.code_bytes):>12}",
        f"  peak         {gib(m.peak_bytes):>12}  = {m.peak_bytes / m.hbm_bytes:.0%} of "
        f"{gib(m.hbm_bytes)}: {'fits' if m.fits else 'DOES NOT FIT'}",
    ]
    if not m.fits:
        lines.append(_HOW_TO_FIT)
    lines.append(
        f"RESULT fits={int(m.fits)} peak_gib={m.peak_bytes / GIB:.3f} "
        f"hbm_gib={m.hbm_bytes / GIB:.1f} temp_gib={m.temp_bytes / GIB:.3f} "
        f"argument_gib={m.argument_bytes / GIB:.3f} devices={r.topology.num_devices} "
        f"attention={r.attention}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`toxjax compile-check --topology=v4-32 [--hbm_gib=N] <toxjax train gin flags>`.

    Returns 0 if the step fits, 1 if it does not, 2 on a usage or configuration error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: toxjax compile-check --topology=TOPOLOGY [--hbm_gib=N] --gin_file=FILE "
            "[--gin.NAME=VALUE ...]\n\n" + __doc__.strip() + "\n\nThe gin flags are those of "
            "`toxjax train` (see `toxjax train --help`). Exit codes: 0 fits, 1 does not fit, "
            "2 usage or configuration error."
        )
        return 0
    topology_arg, hbm_gib, rest = None, None, []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name == "--topology":
            topology_arg = value
        elif name == "--hbm_gib":
            hbm_gib = float(value)
        else:
            rest.append(arg)
    if not topology_arg:
        print(
            "toxjax compile-check: --topology=<v4-32|v5p-128|v5litepod-16|v6e-64|v4:2x2x4> "
            "is required",
            file=sys.stderr,
        )
        return 2
    from toxjax import gin_utils

    try:
        topology = parse_topology(topology_arg)
        if hbm_gib is not None:
            topology = dataclasses.replace(topology, hbm_bytes=int(hbm_gib * GIB))
        gin_utils.parse_gin(*gin_utils.parse_flags(rest))
        result = check(topology)
    except DoesNotFitError as e:
        print(f"toxjax compile-check: DOES NOT FIT: {e}", file=sys.stderr)
        print(
            f"RESULT fits=0 hbm_gib={topology.hbm_bytes / GIB:.1f} devices={topology.num_devices}"
        )
        return 1
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        print(f"toxjax compile-check: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0 if result.memory.fits else 1


if __name__ == "__main__":
    sys.exit(main())
