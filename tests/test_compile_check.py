"""`toxjax compile-check`: topology names, and AOT compiles against libtpu's TPU devices."""

import math

import gin
import jax
import pytest

from toxjax import compile_check as cc

GIB = 1024**3
needs_libtpu = pytest.mark.skipif(
    not cc.libtpu_available(),
    reason="libtpu is not installed (pip install 'toxjax[tpu]'): the AOT compile for TPU "
    "cannot run; the topology parsing tests still do",
)


@pytest.mark.parametrize(
    "text,name,devices,hbm_gib",
    [
        ("v4-8", "v4:2x2x1", 4, 32),
        ("v4-16", "v4:2x2x2", 8, 32),
        ("v4-32", "v4:2x2x4", 16, 32),
        ("v4-64", "v4:2x4x4", 32, 32),
        ("v4-128", "v4:4x4x4", 64, 32),
        ("v5p-256", "v5p:4x4x8", 128, 95),
        ("v5litepod-16", "v5e:4x4", 16, 16),
        ("v5e-8", "v5e:2x4", 8, 16),
        ("v6e-64", "v6e:8x8", 64, 32),
        ("v4:2x2x4", "v4:2x2x4", 16, 32),
    ],
)
def test_parse_topology(text, name, devices, hbm_gib):
    t = cc.parse_topology(text)
    assert (t.name, t.num_devices, t.hbm_bytes) == (name, devices, hbm_gib * GIB)


@pytest.mark.parametrize(
    "text,match",
    [
        ("v4-7", "counts TensorCores"),
        ("v4-24", "power-of-two"),
        ("v9-8", "expected an accelerator type"),
        ("v5e:4x4x4", "2 dimensions"),
    ],
)
def test_parse_topology_errors(text, match):
    with pytest.raises(ValueError, match=match):
        cc.parse_topology(text)


def _flags(*extra):
    return [
        "--gin_file=runs/pretrain.gin",
        "--gin_file=models/test.gin",
        "--gin.ModelConfig.vocab_size=512",
        "--gin.SEQUENCE_LENGTH=128",
        "--gin.BATCH_SIZE=16",
        *extra,
    ]


@needs_libtpu
def test_compiles_for_v4_and_reports_per_device_memory(capsys):
    gin.clear_config()
    assert cc.main(["--topology=v4-16", *_flags("--gin_file=mesh/2x2x2.gin")]) == 0
    out = capsys.readouterr().out
    assert "v4:2x2x2, 8 devices" in out and "fits" in out
    # The arguments are this device's shards of the state and the batch, in TPU tiled
    # layouts: tiny arrays are padded to (8, 128) tiles, so at least their raw bytes.
    gin.clear_config()
    from toxjax import gin_utils

    gin_utils.parse_gin(*gin_utils.parse_flags(_flags("--gin_file=mesh/2x2x2.gin")))
    topology = cc.parse_topology("v4-16")
    result = cc.check(topology)
    assert result.mesh == {"data": 2, "fsdp": 2, "tensor": 2}
    from toxjax import sharding as sh
    from toxjax.model import DecoderLM, ModelConfig
    from toxjax.optim import OptimizerConfig, make_optimizer
    from toxjax.train_state import abstract_state

    mesh = sh.make_mesh((2, 2, 2), devices=cc.tpu_devices(topology))
    model = DecoderLM(gin.get_configurable(ModelConfig)())
    state, _ = abstract_state(model, make_optimizer(OptimizerConfig(), 10), 128, mesh)
    shard_bytes = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
        for x in jax.tree.leaves(state)
    )
    batch_bytes = 5 * (16 // 4) * 128 * 4  # 5 int32 features, 4 rows per device
    assert result.memory.argument_bytes >= shard_bytes + batch_bytes
    assert result.memory.alias_bytes > 0  # the donated state
    # A tiny model: well under 32 MiB a device, code included (the splash kernels that
    # "auto" picks for TPU are ~4 MiB of it).
    assert result.memory.fits and 0 < result.memory.peak_bytes < 32 * 2**20


@needs_libtpu
def test_too_small_hbm_fails_clearly(capsys):
    gin.clear_config()
    assert cc.main(["--topology=v4-8", "--hbm_gib=0.0001", *_flags()]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "RESULT fits=0" in out and "To fit:" in out


@needs_libtpu
def test_xla_out_of_memory_is_reported_as_does_not_fit(capsys):
    # 64 rows x 2048 x 50,304 float32 logits per device: ~25 GiB of temporaries alone,
    # with their gradient well over v5e's 16 GiB.
    gin.clear_config()
    code = cc.main(
        [
            "--topology=v5e-4",
            *_flags(
                "--gin.ModelConfig.vocab_size=50304",
                "--gin.SEQUENCE_LENGTH=2048",
                "--gin.BATCH_SIZE=256",
            ),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "DOES NOT FIT" in captured.err and "RESOURCE_EXHAUSTED" in captured.err
    assert "RESULT fits=0" in captured.out


@needs_libtpu
@pytest.mark.parametrize("topology", ["v4-8", "v5e-4"])
def test_compiles_with_splash_attention_and_the_chunked_loss(topology, capsys):
    """ "auto" attention resolves for the TPU being compiled for, not this CPU host."""
    gin.clear_config()
    assert cc.main([f"--topology={topology}", *_flags("--gin.ModelConfig.logits_chunk=64")]) == 0
    out = capsys.readouterr().out
    assert "; attention splash" in out and "attention=splash" in out and "fits" in out


def test_attention_kernel_the_tpu_cannot_run_is_one_line(capsys):
    gin.clear_config()
    flags = _flags("--gin.ModelConfig.attention='pallas_gpu'")
    assert cc.main(["--topology=v4-8", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "'pallas_gpu' cannot run on tpu" in err and "'splash'" in err
    assert len(err.splitlines()) == 1


def test_missing_topology_is_a_usage_error(capsys):
    assert cc.main(_flags()) == 2
    assert "--topology" in capsys.readouterr().err
