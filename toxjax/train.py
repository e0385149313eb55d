"""Gin-configured pretraining: the training loop, and its command line.

    python -m toxjax.train --gin_file=gin_configs/runs/pretrain.gin \
        --gin_file=gin_configs/models/tiny.gin --gin.MODEL_DIR=/tmp/run

The run resumes from the newest checkpoint in MODEL_DIR, writes the operative gin config
(`config.gin`), `run.json` (what inference needs), per-step metrics (`metrics.jsonl`)
and TensorBoard summaries (`train/`) there. The rooms it uses: `gin_utils` (the command
line), `train_guards` (argument checks, the MODEL_DIR lock), `train_spec` (configuration
-> the train step; `toxjax compile-check` uses the same), `checkpoint`, `data`,
`train_report` (metrics file, TensorBoard, progress bar, throughput).

A refused run writes nothing: every check that can refuse a resume (run.json, the
checkpoint's shapes, the data position) runs before run.json, config.gin or the
vocabulary copies are written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import sys
from collections.abc import Sequence

import gin
import jax

from toxjax import checkpoint as ckpt_lib
from toxjax import fileio, flops, gin_utils, locking, registry, train_guards, train_report
from toxjax import train_spec as spec_lib
from toxjax.data import DataConfig, DataIterator, DataStateMismatchError
from toxjax.errors import ConfigError
from toxjax.model import ModelConfig
from toxjax.optim import OptimizerConfig
from toxjax.preprocessors import AugmentConfig
from toxjax.run_info import RunInfo
from toxjax.train_state import param_count
from toxjax.vocab_specs import vocab_spec

# Frozen config dataclasses are the only library objects gin binds.
for _cls in (ModelConfig, DataConfig, OptimizerConfig, AugmentConfig):
    gin.external_configurable(_cls, module="toxjax")


class NonFiniteLossError(FloatingPointError):
    """The loss, gradient or updated state became NaN/inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    steps: list[int]
    losses: list[float]
    final_step: int
    model_dir: str


@gin.configurable(denylist=["progress"])
def train(
    model_dir: str = gin.REQUIRED,
    model_config: ModelConfig = gin.REQUIRED,
    data: DataConfig = gin.REQUIRED,
    optimizer: OptimizerConfig = OptimizerConfig(),
    num_steps: int = 1000,
    batch_size: int = 8,
    mesh_shape: Sequence[int] = (-1, 1, 1),
    grad_accum_steps: int = 1,
    seed: int = 0,
    log_every: int = 10,
    checkpoint_every: int = 500,
    keep_checkpoints: int = 3,
    async_checkpoint: bool = True,
    module_imports: Sequence[str] = (),
    stop_after: int | None = None,
    init_from: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains `model_config` on `data` for `num_steps` steps, resuming from MODEL_DIR.

    Args:
      model_dir: run directory (local path or gs://); checkpoints and logs go here.
      model_config: the model (see gin_configs/models/).
      data: the seqio task and sequence length.
      optimizer: AdamW + schedule settings.
      num_steps: total optimizer steps of the run (the schedule's length).
      batch_size: global batch size in packed rows.
      mesh_shape: sizes of the ('data', 'fsdp', 'tensor') mesh axes; -1 = the rest.
      grad_accum_steps: microbatches per step (batch_size must divide by it).
      seed: parameter-init and dropout seed (the data seed is `data.seed`).
      log_every: steps between console / TensorBoard logs.
      checkpoint_every: steps between (async) checkpoints; the last step always saves.
      keep_checkpoints: checkpoints kept on disk.
      module_imports: modules imported first (they register seqio tasks).
      stop_after: stop (with a checkpoint) after this step without finishing the run;
        used to simulate preemption.
      init_from: a transformers checkpoint directory to start from (continued
        pretraining, `toxjax.interop.init_from`): its architecture and weights, gin's
        compute settings; recorded in run.json, read only when the run starts.
      progress: show a progress bar.

    Returns:
      The steps and losses this invocation ran.
    """
    train_guards.check_train_arguments(**{k: v for k, v in locals().items() if k != "progress"})
    model_dir, created = train_guards.prepare_model_dir(model_dir)
    try:
        return _train(**{k: v for k, v in locals().items() if k != "created"})
    except BaseException:
        if created:  # a run refused (or crashed) before it wrote anything leaves nothing
            train_guards.remove_if_empty(model_dir)
        raise


def _train(
    model_dir,
    model_config,
    data,
    optimizer,
    num_steps,
    batch_size,
    mesh_shape,
    grad_accum_steps,
    seed,
    log_every,
    checkpoint_every,
    keep_checkpoints,
    async_checkpoint,
    module_imports,
    stop_after,
    init_from,
    progress,
) -> TrainResult:
    # Before anything expensive (data, compile): a second trainer stops here.
    lock = train_guards.lock_model_dir(model_dir)
    with contextlib.ExitStack() as cleanup:
        if lock is not None:
            cleanup.callback(lock.release)
        spec = spec_lib.resolve(
            model_config=model_config,
            optimizer=optimizer,
            num_steps=num_steps,
            batch_size=batch_size,
            mesh_shape=mesh_shape,
            grad_accum_steps=grad_accum_steps,
            seed=seed,
            module_imports=module_imports,
            sequence_length=data.sequence_length,
            task=data.mixture_or_task_name,
            init_from=init_from,
        )
        info = registry.task_info(spec.task)
        train_guards.check_augment_bindings(spec.task, info)
        ts = spec.build()
        ckpt = ckpt_lib.Checkpointer(
            model_dir, checkpoint_every, keep_checkpoints, async_checkpoint
        )
        cleanup.callback(ckpt.close)
        cleanup.callback(ckpt.wait)
        data_iter = DataIterator(data, batch_size, ts.mesh, num_steps=num_steps)
        cleanup.callback(data_iter.close)
        lead = jax.process_index() == 0  # one process writes the run's files
        run = _run_info(spec, info)
        latest = ckpt.latest_step()
        if latest is None and spec.init_from:
            state, provenance = _imported_state(spec, ts)
            run = dataclasses.replace(run, init_from=provenance)
        elif latest is None:
            state = ts.init(jax.random.key(seed))
        else:
            earlier = _check_resume(run, model_dir, lead)
            # The import's provenance (its weights hashed at the start) stays; a resumed
            # run never reads the weights again.
            run = dataclasses.replace(run, init_from=earlier.init_from if earlier else None)
            # Newest step whose arrays match their checksums; newer corrupt ones moved aside.
            latest, state, data_state = ckpt.restore_latest(ts.abstract_state)
            data_iter.restore(data_state)
        # Every refusal is behind us: now the run directory may be written.
        reporters = train_report.Reporters([])
        cleanup.callback(reporters.close)
        if lead:
            _write_run_files(run, spec, model_dir)
            reporters.reporters += [
                train_report.MetricsFile(model_dir, latest or 0),
                train_report.TensorBoard(model_dir),
            ]
            if progress:
                reporters.reporters.append(train_report.ProgressBar())
        end = num_steps if stop_after is None else min(num_steps, stop_after)
        every = (log_every, checkpoint_every)
        return _loop(ts, state, data_iter, ckpt, lock, reporters, spec, model_dir, end, every)


def _imported_state(spec, ts):
    """The first state of a `train.init_from` run: the checkpoint's weights, born sharded."""
    from toxjax.interop import init_from
    from toxjax.train_state import state_from_params

    params, provenance = init_from.read_params(spec.init_from, spec.model_config, spec.vocabulary)
    try:
        state = state_from_params(params, ts.tx, ts.state_shardings, ts.mesh)
    except ValueError as e:
        raise ConfigError(f"train.init_from = {spec.init_from!r}: {e}") from None
    return state, provenance


def _run_info(spec, info) -> RunInfo:
    """This run's run.json (the vocabulary described where it is, not yet copied)."""
    return RunInfo(
        model_config=spec.model_config,
        vocabulary=vocab_spec(spec.vocabulary, None),
        task=spec.task,
        sequence_length=spec.seq_len,
        strategy=info.strategy if info else None,
        augment=info.config if info else None,
        corpus=None
        if info is None
        else {
            "name": info.corpus,
            "source": info.source,
            "fraction": info.fraction,
            "scorer": info.scorer(),
        },
        # Until the weights are read (a fresh start) or run.json is (a resume).
        init_from=None if spec.init_from is None else {"source": spec.init_from},
    )


def _check_resume(run: RunInfo, model_dir: str, lead: bool) -> RunInfo | None:
    """Refuses to resume a run trained on other data (run.json), before anything is read;
    the lead process reads run.json and every process learns its verdict.

    Returns:
      The run.json being resumed (on the lead process; None on the others).
    """
    problem, earlier = None, None
    if lead:
        earlier = RunInfo.read(model_dir)
        changed = run.resume_mismatches(earlier)
        if changed:
            problem = (
                f"{model_dir} holds a run trained on other data than this one "
                f"({'; '.join(changed)}); resuming would mix the two. Use a fresh "
                "MODEL_DIR, or restore the original settings."
            )
    if not train_guards.lead_says(problem is None):
        raise ckpt_lib.CheckpointMismatchError(
            problem or "the lead process refused to resume this run (see its log)"
        )
    return earlier


def _write_run_files(run: RunInfo, spec, model_dir: str) -> None:
    """run.json (with the vocabulary files copied into MODEL_DIR/vocab) and config.gin."""
    dataclasses.replace(run, vocabulary=vocab_spec(spec.vocabulary, model_dir)).write(model_dir)
    fileio.write_text(
        os.path.join(model_dir, "config.gin"), gin.operative_config_str() or gin.config_str()
    )


def _loop(ts, state, data_iter, ckpt, lock, reporters, spec, model_dir, end, every):
    """Steps until `end`, logging and checkpointing every `every = (log_every,
    checkpoint_every)` steps (and at `end`)."""
    start = int(jax.device_get(state.step))
    log_every, save_every = every
    cpu = jax.devices()[0].platform == "cpu"
    throughput = train_report.Throughput(
        spec.batch_size * spec.seq_len,
        spec.model_config.train_flops_per_token(spec.seq_len) * spec.batch_size * spec.seq_len,
        flops.peak_flops_per_device() * jax.device_count(),
        (lambda: flops.measure_peak_flops(repeats=3) * jax.device_count()) if cpu else None,
    )
    n_params = param_count(state.params) / 1e6
    reporters.start(
        start,
        spec.num_steps,
        f"model: {n_params:.2f}M params, mesh {dict(ts.mesh.shape)}"
        + (f", resume from step {start}" if start else ""),
    )
    result = TrainResult([], [], start, model_dir)
    pending: list[tuple[int, dict]] = []  # per-step device metrics, synced at log/save time
    for step in range(start + 1, end + 1):
        state, metrics = ts(state, next(data_iter))
        pending.append((step, metrics))
        throughput.step()
        reporters.step(step)
        save_now = step % save_every == 0 or step == end
        if step % log_every == 0 or save_now:
            _log(pending, result, reporters, throughput, ckpt, model_dir)
        if save_now:
            # A lead that lost its lease (gs://) must not write another checkpoint.
            train_guards.check_lock(lock)
            ckpt.save(step, state, data_iter.state(), force=True)
            reporters.checkpoint(step)
    result.final_step = int(jax.device_get(state.step))
    return result


def _log(pending, result, reporters, throughput, ckpt, model_dir) -> None:
    """Fetches the pending steps' metrics, stops on a non-finite one, and reports them."""
    host = jax.device_get([m for _, m in pending])
    records = []
    for (s, _), m in zip(pending, host, strict=True):
        if int(m["nonfinite"]):
            ckpt.wait()
            what = (
                "the updated weights or optimizer state became"
                if all(map(math.isfinite, (float(m["loss"]), float(m["grad_norm"]))))
                else "loss became"
            )
            good = ckpt.latest_step()
            kept = (
                f"Last good checkpoint: step {good} in {model_dir}"
                if good is not None
                else f"No checkpoint was written yet in {model_dir}"
            )
            raise NonFiniteLossError(
                f"{what} non-finite at step {s} (loss={float(m['loss'])}, "
                f"grad_norm={float(m['grad_norm'])}); the update was skipped and no "
                f"checkpoint was written after it. {kept}. Lower the learning rate or "
                "check the data."
            )
        rec = {
            "step": s,
            "loss": float(m["loss"]),
            "grad_norm": float(m["grad_norm"]),
            "learning_rate": float(m["learning_rate"]),
            "tokens": float(m["tokens"]),
        }
        result.steps.append(s)
        result.losses.append(rec["loss"])
        records.append(rec)
    reporters.log(records[-1]["step"], records, {**records[-1], **throughput.measure()})
    pending.clear()


# ----------------------------------------------------------------------------- CLI

_DISTRIBUTED_FLAGS = {"coordinator_address": str, "num_processes": int, "process_id": int}


def init_distributed(argv: Sequence[str]) -> list[str]:
    """Handles `--multihost`: calls `jax.distributed.initialize`, one process per host.

    On Cloud TPU the coordinator and process ids are discovered; elsewhere (several
    processes on one machine, GPU clusters) pass `--coordinator_address=HOST:PORT`,
    `--num_processes=N` and `--process_id=I`.

    Returns:
      `argv` without these flags.
    """
    rest, kwargs, multihost = [], {}, False
    for arg in argv:
        name, _, value = arg.partition("=")
        if arg == "--multihost":
            multihost = True
        elif name.startswith("--") and name[2:] in _DISTRIBUTED_FLAGS:
            try:
                kwargs[name[2:]] = _DISTRIBUTED_FLAGS[name[2:]](value)
            except ValueError:
                raise ValueError(
                    f"{arg!r}: expected {name}=<{_DISTRIBUTED_FLAGS[name[2:]].__name__}>"
                ) from None
        else:
            rest.append(arg)
    if kwargs and not multihost:
        raise ValueError(f"--{', --'.join(kwargs)} only make sense with --multihost")
    if multihost:
        jax.distributed.initialize(**kwargs)
    return rest


# Exit codes of `toxjax train`, one per kind of refusal (scripts can tell them apart).
EXIT_CRASH, EXIT_CONFIG, EXIT_NONFINITE, EXIT_MISMATCH, EXIT_LOCKED, EXIT_CORRUPT = 1, 2, 3, 4, 5, 6
_EXIT_CODES = (
    (ConfigError, EXIT_CONFIG),  # TrainConfigError, a bad ModelConfig / AugmentConfig / attention
    (NonFiniteLossError, EXIT_NONFINITE),
    (ckpt_lib.CheckpointMismatchError, EXIT_MISMATCH),
    (DataStateMismatchError, EXIT_MISMATCH),
    (locking.UnsafeLockError, EXIT_CONFIG),  # a planted symlink or foreign file at LOCK
    (locking.LockHeldError, EXIT_LOCKED),
    (ckpt_lib.CorruptCheckpointError, EXIT_CORRUPT),
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        try:
            files, _, paths = gin_utils.parse_flags(
                [a for a in argv if a not in ("-h", "--help", "help")]
            )
        except ValueError:
            files, paths = [], []
        print(gin_utils.usage(files, paths))
        return 0
    try:
        argv = init_distributed(argv)
    except ValueError as e:
        print(f"toxjax train: {e}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        files, bindings, paths = gin_utils.parse_flags(argv)
        gin_utils.parse_gin(files, bindings, paths)
        gin_utils.check_macros_used(bindings, files, paths)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"toxjax train: configuration error: {gin_utils.message(e)}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = train()
    except tuple(cls for cls, _ in _EXIT_CODES) as e:
        code = next(c for cls, c in _EXIT_CODES if isinstance(e, cls))
        prefix = "configuration error: " if isinstance(e, ConfigError) else ""
        print(f"toxjax train: {prefix}{gin_utils.message(e)}", file=sys.stderr)
        return code
    finally:
        gc.collect()  # drop the data pipeline's iterators before the interpreter exits
    if result.losses:
        print(f"done: step {result.final_step}, last loss {result.losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
