"""The artifact store: one interface, a local-directory backend and an S3 backend.

Stages and executors call `open_store(spec.storage)` and then use only the ArtifactStore methods,
so the same code runs against a directory on a laptop and a MinIO bucket in a cluster. Keys come
from dpe.layout. `locate` finds what a URI in a spec names: the run's own store, or another bucket
of the same S3 endpoint (models and datasets uploaded with any S3 client). `dpe.store.tree` turns a
folder of objects (a model, a checkpoint) into a local directory whose every file is checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from dpe import layout
from dpe.contract import S3_ACCESS_KEY_ENV, S3_SECRET_KEY_ENV
from dpe.spec import Storage
from dpe.store.base import ArtifactStore
from dpe.store.errors import (
    IntegrityError,
    NotFound,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    Unreachable,
)
from dpe.store.local import LocalStore
from dpe.store.s3 import S3Store

ACCESS_KEY_ENV = S3_ACCESS_KEY_ENV
SECRET_KEY_ENV = S3_SECRET_KEY_ENV

__all__ = [
    "ACCESS_KEY_ENV",
    "SECRET_KEY_ENV",
    "ArtifactStore",
    "IntegrityError",
    "LocalStore",
    "NotFound",
    "PermanentStoreError",
    "S3Store",
    "StoreError",
    "TransientStoreError",
    "Unreachable",
    "locate",
    "open_store",
]


def open_store(storage: Storage, env: Mapping[str, str] = os.environ) -> ArtifactStore:
    """The store that a run's `spec.storage` describes; S3 credentials are read from `env`."""
    if storage.s3 is None:
        assert storage.local is not None
        return LocalStore(storage.local.path)
    missing = [name for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV) if not env.get(name)]
    if missing:
        raise PermanentStoreError(
            f"S3 credentials for bucket '{storage.s3.bucket}' are missing: set {' and '.join(missing)} "
            "(in Kubernetes the operator fills them from storage.s3.credentialsSecret)"
        )
    s3 = storage.s3
    return S3Store(
        s3.endpoint,
        s3.bucket,
        env[ACCESS_KEY_ENV],
        env[SECRET_KEY_ENV],
        region=s3.region,
        secure=s3.secure,
        prefix=s3.prefix,
    )


def locate(storage: Storage, store: ArtifactStore, uri: str) -> tuple[ArtifactStore, str]:
    """The store holding what `uri` names, and its key there ('' for the whole store; no '/' at either end).

    A URI inside the run's store (`store`, opened from `storage`), or a `store:<key>` reference
    (`layout.store_reference`), is found there. An `s3://` URI in another bucket of the run's S3
    endpoint, or outside the run's key prefix, is found in that bucket through the same client and
    credentials. ValueError for anything else (a file:// path outside a local store is a plain local
    path, which the caller reads itself).
    """
    try:
        return store, layout.key_from_uri(storage, uri.rstrip("/"))
    except ValueError:
        if not (isinstance(store, S3Store) and uri.startswith("s3://")):
            raise
    parts = urlsplit(uri)
    key = parts.path.strip("/")
    if key:
        layout.check_key(key)
    return store.in_bucket(parts.netloc), key
