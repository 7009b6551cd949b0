"""The wheels the GRPO GPU benchmark needs on a GPU machine that has torch and transformers but no
network: fetched here, installed there only where that machine lacks them.

    python -m benchmarks.gpu_carry download          # here: the wheels, for Python 3.12 on x86-64, into .whl/
    python3 -m benchmarks.gpu_carry install          # there: `pip list`, then only the missing ones into /tmp/site
    PYTHONPATH=/tmp/site:workloads python3 -m benchmarks.grpo_gpu --size 3b --json $OUT/grpo_gpu.json

`download` takes each package at the version installed here (the one the tests ran with) and fails
when the wheels come to more than `LIMIT_BYTES`, what such a machine accepts beside the checkout.
`install` compares each wheel's name and version with `pip list` there: a package already present
at that version is left alone, any other is installed (without its dependencies: the list is the
closure the benchmark imports).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

WHEELS = Path(".whl")
LIMIT_BYTES = 64 * 2**20
NEEDED = (
    "trl", "datasets", "dill", "multiprocess", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
    "minio", "argon2-cffi", "argon2-cffi-bindings", "pycryptodome", "cffi", "pycparser", "xxhash",
)
"""What the benchmark imports (the dpe package's train stage, TRL and its datasets) beyond such a
machine's torch, transformers, accelerate, numpy, pyarrow, pandas, pillow and tokenizers."""
TARGET = dict(python="3.12", platforms=("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                                        "manylinux1_x86_64"))
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_identity(filename: str) -> tuple[str, str]:
    """(canonical name, version) of a wheel file's name."""
    found = _WHEEL.match(filename)
    if not found or not filename.endswith(".whl"):
        raise ValueError(f"{filename}: not a wheel's file name")
    return canonical(found["name"]), found["version"]


def to_install(wheels: list[str], installed: dict[str, str]) -> list[str]:
    """The wheels whose package is missing from `installed` (canonical name: version) or there at another version."""
    return [wheel for wheel in wheels if installed.get(wheel_identity(wheel)[0]) != wheel_identity(wheel)[1]]


def download(directory: Path) -> int:
    directory.mkdir(exist_ok=True)
    platforms = [arg for platform in TARGET["platforms"] for arg in ("--platform", platform)]
    for name in NEEDED:
        version = importlib.metadata.version(name)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", TARGET["python"],
                        "--implementation", "cp", *platforms, "-d", str(directory), f"{name}=={version}"], check=True)
    total = sum(path.stat().st_size for path in directory.glob("*.whl"))
    print(json.dumps({"wheels": sorted(p.name for p in directory.glob("*.whl")), "bytes": total, "limit_bytes": LIMIT_BYTES}))
    if total > LIMIT_BYTES:
        print(f"{directory}: {total} bytes of wheels, over the {LIMIT_BYTES} a GPU machine accepts", file=sys.stderr)
        return 1
    return 0


def install(directory: Path, target: Path) -> int:
    if sys.version_info[:2] != tuple(int(part) for part in TARGET["python"].split(".")):
        print(f"the wheels are for Python {TARGET['python']}, this is {sys.version.split()[0]}", file=sys.stderr)
        return 1
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True).stdout
    installed = {canonical(entry["name"]): entry["version"] for entry in json.loads(listed)}
    wheels = sorted(path.name for path in directory.glob("*.whl"))
    chosen = to_install(wheels, installed)
    print(json.dumps({"install": chosen, "already_there": sorted(set(wheels) - set(chosen))}))
    if chosen:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                        "--target", str(target), *(str(directory / wheel) for wheel in chosen)], check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("download", "install"))
    parser.add_argument("--wheels", type=Path, default=WHEELS)
    parser.add_argument("--target", type=Path, default=Path("/tmp/site"))
    args = parser.parse_args(argv)
    return download(args.wheels) if args.action == "download" else install(args.wheels, args.target)


if __name__ == "__main__":
    sys.exit(main())
