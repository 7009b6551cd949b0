"""The store's one error hierarchy, so callers decide by type: retry later, give up, or repair.

Messages name the backend, bucket, endpoint and key involved, never a credential: they end up in
logs, Kubernetes Events and status conditions.
"""

from __future__ import annotations


class StoreError(Exception):
    """Any failure of the artifact store."""


class NotFound(StoreError):
    """The key holds no object."""


class PermanentStoreError(StoreError):
    """A failure that retrying cannot fix: bad credentials, a missing bucket, a refused request."""


class IntegrityError(PermanentStoreError):
    """An object's bytes do not match the checksum recorded when it was written: reading it again reads
    the same bytes, so only writing it again (or falling back to another copy) helps."""


class TransientStoreError(StoreError):
    """A failure that may pass: the endpoint is unreachable, overloaded or timed out.

    Backends retry these themselves before raising; a caller seeing one may retry the whole step later.
    """


class Unreachable(TransientStoreError):
    """The endpoint could not be talked to at all: connection refused or reset, or a timeout."""
