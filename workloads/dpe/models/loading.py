"""Turning a model reference into a local Hugging Face directory.

References are what `spec.baseModel` and status fields hold: `builtin:tiny-qwen2.5-vl` (built on
first use, once per run, and shared through the run's store), a store reference (`store:<key>` in
the run's store, `file:///...` inside the run's local store, or `s3://...` in any bucket of the run's
S3 endpoint), a local path, or a hub id (where the network allows it). A model in the store has every
file checked against the SHA-256 the store recorded before it is used: read in place from a local
store, downloaded once into the cache from S3, and fetched again where the cache no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from dpe import layout
from dpe.contract import CACHE_ENV
from dpe.spec import BUILTIN_SCHEME, Storage
from dpe.store import ArtifactStore, LocalStore, locate, tree

BUILTIN_PREFIX = f"{BUILTIN_SCHEME}tiny-"
WARM_SUFFIX = "-warm"
"""builtin:tiny-<arch>-warm is the tiny model after a short supervised warm-up (dpe.models.bootstrap)."""

log = logging.getLogger("dpe.models")


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


def default_cache_dir() -> Path:
    """Where this machine caches models: `DPE_CACHE_DIR`, else ~/.cache/dpe."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "dpe"))


def _from_store(holder: ArtifactStore, key: str, cache_dir: Path, reference: str) -> Path:
    """The model under `key` of `holder` as a local directory whose every file matches the SHA-256 the
    store recorded: in place in a local store, otherwise downloaded into the cache (dpe.store.tree)."""
    prefix = key + "/"
    names = [found[len(prefix) :] for found in holder.list(prefix)]
    if not names:
        raise FileNotFoundError(f"no model files under {reference}")
    name = hashlib.sha256(holder.location(key).encode()).hexdigest()[:16]
    record = cache_dir / "store" / f"{name}.checked.json"
    if isinstance(holder, LocalStore):
        return tree.in_place(holder, prefix, names, record)
    return tree.mirror(holder, prefix, dict.fromkeys(names), cache_dir / "store" / name, record)


def _built(name: str, cache_dir: Path) -> Path:
    """A built-in model built on this machine (or taken from its cache)."""
    from dpe.models.bootstrap import WARM_RECIPE, build_warm_model
    from dpe.models.tiny import build_tiny_model, world_corpus

    target = cache_dir / "builtin" / (f"{name}-recipe{WARM_RECIPE}" if name.endswith(WARM_SUFFIX) else name)
    if not (target / "config.json").is_file():
        started = time.monotonic()
        staging = _fresh_dir(target)
        if name.endswith(WARM_SUFFIX):
            build_warm_model(name.removesuffix(WARM_SUFFIX), staging)
        else:
            build_tiny_model(name, staging, corpus=world_corpus())
        _publish(staging, target)
        log.info(json.dumps({"event": "builtin_model_built", "model": f"{BUILTIN_PREFIX}{name}", "seconds": round(time.monotonic() - started, 2)}))
    return target


def _builtin(reference: str, storage: Storage, store: ArtifactStore, cache_dir: Path, run: tuple[str, str] | None) -> Path:
    from dpe.models.tiny import ARCHITECTURES

    name = reference.removeprefix(BUILTIN_PREFIX)
    if name.removesuffix(WARM_SUFFIX) not in ARCHITECTURES:
        choices = [f"{BUILTIN_PREFIX}{a}{w}" for a in ARCHITECTURES for w in ("", WARM_SUFFIX)]
        raise ValueError(f"unknown built-in model '{reference}'; choose one of {', '.join(choices)}")
    if run is None:
        return _built(name, cache_dir)
    shared = reference.removeprefix(BUILTIN_SCHEME)
    prefix, marker = layout.shared_model_prefix(*run, shared), layout.shared_model_marker(*run, shared)
    if store.exists(marker):
        uri = layout.store_uri(storage, prefix.rstrip("/"))
        log.info(json.dumps({"event": "builtin_model_shared", "model": reference, "from": uri}))
        return _from_store(store, prefix.rstrip("/"), cache_dir, uri)
    local = _built(name, cache_dir)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        store.put_file(prefix + path.relative_to(local).as_posix(), path)
    store.put_json(marker, {"model": reference})
    return local


def resolve_model(reference: str, storage: Storage, store: ArtifactStore, cache_dir: Path, run: tuple[str, str] | None = None) -> Path:
    """A local directory holding the referenced model.

    With `run` (namespace, name), a built-in model is built once for the run: the first stage to need
    it builds it and publishes it to the run's store, and every later stage, in any pod, reads that
    copy, so all of them see the same weights.
    """
    if reference.startswith(BUILTIN_PREFIX):
        return _builtin(reference, storage, store, cache_dir, run)
    if reference.startswith(("s3://", "file://", layout.STORE_SCHEME)):
        try:
            holder, key = locate(storage, store, reference)
        except ValueError:
            if reference.startswith("file://"):
                return Path(reference.removeprefix("file://"))
            raise
        return _from_store(holder, key, cache_dir, reference)
    path = Path(reference)
    if reference.startswith(("/", "./", "../")):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{reference} is not a model directory (no config.json)")
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(reference.removeprefix("hf://")))
