"""Checksums of a checkpoint's values: written at save, verified at restore.

A checkpoint is trusted only if the arrays restored from it are bit for bit the arrays
that were saved. Hashing Orbax's files would tie us to its private layout (OCDBT data
files are content-addressed blobs shared by many arrays), so we hash the *values*
instead: at save, a digest of every array of the state being saved; at restore, the
same digest of every array restored. Any change between the two (a flipped bit on disk,
a truncated file that still decodes, a bug in a storage layer) shows as a mismatch that
names the array.

The digest runs on the accelerator, as one jitted reduction over the global arrays:
- it is exact integer arithmetic (sums mod 2**32), so it does not depend on the
  sharding, the mesh, the reduction order or the number of processes: a state saved on
  a v4-32 pod and restored on one CPU gives the same digests;
- on several hosts each process reduces its own shards and the partial sums meet in
  one all-reduce of a few bytes per array; the result is replicated, so every process
  reads the same global digests from its own devices (no per-process manifests, no
  process sees another's shards);
- at save it is dispatched before Orbax's asynchronous write and read back in Orbax's
  background thread, so the train loop does not wait for it.

Each array gets two 32-bit sums over its raw bits, `w[i]` (the element's bit pattern,
widened to uint32) at flat index `i`:
- `sum(w[i] * (2 i + 1))`: odd weights, so any change to a single element, any bit,
  always changes it, and so does moving a value to another index;
- `sum(mix(w[i] ^ (i * golden)))`, with a murmur3-style finaliser `mix`: changes to
  several elements cancel only by chance (about 2**-32).
This is a check against corruption, not against tampering (it is not cryptographic).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

ALGORITHM = "toxjax-u32-weighted+mixed-sum-v1"


def leaf_name(path) -> str:
    """A pytree path as 'params/blocks/mlp/wi' (dict keys, attribute names, indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def named_arrays(tree) -> dict[str, Any]:
    """{leaf name: array} of every array leaf of `tree` (None leaves are skipped)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {leaf_name(path): x for path, x in leaves if hasattr(x, "dtype")}


def _words(x: jax.Array) -> jax.Array:
    """The raw bits of `x` as uint32, one word per element (two for 64-bit types)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size in (1, 2):
        unsigned = jnp.uint8 if size == 1 else jnp.uint16
        return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    if size == 8:  # bitcasting to a narrower type adds a trailing axis of 2 words
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    raise TypeError(f"no checksum for dtype {x.dtype}")


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every element, mod 2**32, built from iotas.

    Reshaping a sharded array to 1-D could make XLA move data between devices; an index
    computed per axis keeps the digest an elementwise map and one reduction.
    """
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        index = index + iota * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


def _mix(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _digest(x: jax.Array) -> jax.Array:
    """`[2]` uint32: the weighted and the mixed sum of `x`'s bits."""
    w = _words(x)
    i = _flat_index(w.shape)
    weighted = jnp.sum(w * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
    mixed = jnp.sum(_mix(w ^ (i * jnp.uint32(0x9E3779B9))), dtype=jnp.uint32)
    return jnp.stack([weighted, mixed])


def _digests(arrays: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {name: _digest(x) for name, x in arrays.items()}


@functools.cache
def _jitted_digests(mesh: jax.sharding.Mesh | None):
    """The digest jitted once per mesh, its outputs replicated on the mesh: every process
    then reads the global digests from its own devices, without a collective."""
    if mesh is None:
        return jax.jit(_digests)
    return jax.jit(_digests, out_shardings=NamedSharding(mesh, PartitionSpec()))


def start_digests(tree) -> dict[str, jax.Array]:
    """Dispatches the digests of every array of `tree` (`[2]` uint32 each); returns at once.

    Read them with `read_digests`, from any thread: unlike the computation (a collective
    on a pod, dispatched here, in program order), reading is local to each process.
    """
    arrays = named_arrays(tree)
    mesh = next(
        (
            x.sharding.mesh
            for x in arrays.values()
            if isinstance(getattr(x, "sharding", None), NamedSharding)
        ),
        None,
    )
    return _jitted_digests(mesh)(arrays) if arrays else {}


def read_digests(pending: dict[str, jax.Array]) -> dict[str, str]:
    """{leaf name: 16 hex digits}; blocks until the digests are computed."""
    out = {}
    for name, d in pending.items():
        if not d.is_fully_addressable:  # replicated on a multi-process mesh
            d = d.addressable_data(0)
        out[name] = "".join(f"{int(v):08x}" for v in np.asarray(d).reshape(-1))
    return out


def tree_digests(tree) -> dict[str, str]:
    """{leaf name: 16 hex digits} for every array of `tree`; the same on every process."""
    return read_digests(start_digests(tree))


def json_digest(value) -> str:
    """sha256 of a JSON-serialisable value in canonical form."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def manifest(tree, json_items: dict[str, Any] | None = None) -> dict:
    """What a checkpoint records about itself: digests of its arrays and JSON items.

    The array digests are left pending (dispatched, not waited for): `resolve` turns the
    manifest into JSON when it is written, which Orbax does in its background thread.
    """
    return {
        "algorithm": ALGORITHM,
        "arrays": start_digests(tree),
        "json": {name: json_digest(v) for name, v in (json_items or {}).items()},
    }


def resolve(manifest_: dict) -> dict:
    """`manifest`'s result with its pending digests read (blocks until computed)."""
    return {**manifest_, "arrays": read_digests(manifest_["arrays"])}


def mismatches(recorded: dict, tree, json_items: dict[str, Any] | None = None) -> list[str]:
    """Names of the arrays / JSON items of `tree` whose digest differs from `recorded`.

    Only what was restored is compared (a partial restore checks its part); an array
    the manifest does not list counts as a mismatch.
    """
    if recorded.get("algorithm") != ALGORITHM:
        return [f"<checksum algorithm {recorded.get('algorithm')!r}>"]
    bad = []
    saved = recorded.get("arrays", {})
    for name, digest in tree_digests(tree).items():
        if saved.get(name) != digest:
            bad.append(name)
    saved_json = recorded.get("json", {})
    for name, value in (json_items or {}).items():
        if saved_json.get(name) != json_digest(value):
            bad.append(name)
    return bad
