"""Turning a model reference into a local Hugging Face directory.

References are what `spec.baseModel` and status fields hold: `builtin:tiny-qwen2.5-vl` (built on
first use, deterministically), a store URI (`file:///...` inside the run's store, or `s3://...` in
any bucket of the run's S3 endpoint, downloaded once into the cache and checked), a local path, or
a hub id (where the network allows it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from dpe.spec import Storage
from dpe.store import ArtifactStore, locate

BUILTIN_PREFIX = "builtin:tiny-"
WARM_SUFFIX = "-warm"
"""builtin:tiny-<arch>-warm is the tiny model after a short supervised warm-up (dpe.models.bootstrap)."""


def _fresh_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))


def _publish(staging: Path, target: Path) -> Path:
    """Move a fully written directory into place; a concurrent winner is kept."""
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(reference: str, storage: Storage, store: ArtifactStore, cache_dir: Path) -> Path:
    """A local directory holding the referenced model."""
    if reference.startswith(BUILTIN_PREFIX):
        from dpe.models.bootstrap import build_warm_model
        from dpe.models.tiny import ARCHITECTURES, build_tiny_model, world_corpus

        name = reference.removeprefix(BUILTIN_PREFIX)
        arch = name.removesuffix(WARM_SUFFIX)
        if arch not in ARCHITECTURES:
            choices = [f"{BUILTIN_PREFIX}{a}{w}" for a in ARCHITECTURES for w in ("", WARM_SUFFIX)]
            raise ValueError(f"unknown built-in model '{reference}'; choose one of {', '.join(choices)}")
        target = cache_dir / "builtin" / name
        if not (target / "config.json").is_file():
            staging = _fresh_dir(target)
            if name.endswith(WARM_SUFFIX):
                build_warm_model(arch, staging)
            else:
                build_tiny_model(arch, staging, corpus=world_corpus())
            _publish(staging, target)
        return target
    if reference.startswith(("s3://", "file://")):
        try:
            holder, key = locate(storage, store, reference)
        except ValueError:
            if reference.startswith("file://"):
                return Path(reference.removeprefix("file://"))
            raise
        prefix = key + "/"
        if storage.local is not None:
            return Path(storage.local.path).absolute() / prefix
        target = cache_dir / "store" / hashlib.sha256(reference.encode()).hexdigest()[:16]
        if not (target / "config.json").is_file():
            keys = holder.list(prefix)
            if not keys:
                raise FileNotFoundError(f"no model files under {reference}")
            staging = _fresh_dir(target)
            for found in keys:
                destination = staging / found[len(prefix) :]
                destination.parent.mkdir(parents=True, exist_ok=True)
                holder.get_file(found, destination)
            _publish(staging, target)
        return target
    path = Path(reference)
    if reference.startswith(("/", "./", "../")):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{reference} is not a model directory (no config.json)")
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(reference.removeprefix("hf://")))
