"""The key layout of the artifact store: the one place that decides where each artifact lives.

Every executor, stage and report builds keys here and nowhere else, so the operator, the local
executor and the stage containers agree on paths without sharing any other state:

    runs/<namespace>/<run>/run.yaml                                  the spec the run started with
    runs/<namespace>/<run>/executor.json                             the lease of the `dpe run` executing it
    runs/<namespace>/<run>/weakness_table.json                       per-iteration capability table
    runs/<namespace>/<run>/report/...                                the human-readable run report
    runs/<namespace>/<run>/models/<name>/...                         a built-in model, built once per run
    runs/<namespace>/<run>/models/<name>.complete.json               written after all of its files
    runs/<namespace>/<run>/iterations/<k>/<stage>/...                one stage's outputs
    runs/<namespace>/<run>/iterations/<k>/<stage>/result.json        written last: the stage is done
    runs/<namespace>/<run>/iterations/<k>/<stage>/shards/<i>-of-<n>/ one shard of a sharded stage

Keys are relative, '/'-separated and never contain '.' or '..' segments, so a key means the same
object in a bucket and under a local directory. Prefixes end with '/'; keys never do. Results and
statuses name objects with `store_reference`: `store:<key>` in a local store, so a store directory
copied elsewhere names its own objects, and the s3:// URI in S3.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from dpe.spec import DNS_LABEL_PATTERN, StageName, Storage

RUNS_DIR = "runs"
ITERATIONS_DIR = "iterations"
SHARDS_DIR = "shards"
REPORT_DIR = "report"
MODELS_DIR = "models"
RESULT_FILE = "result.json"
RUN_SPEC_FILE = "run.yaml"
EXECUTOR_LEASE_FILE = "executor.json"
WEAKNESS_TABLE_FILE = "weakness_table.json"
RUN_STATUS_FILE = "status.json"
ITERATION_FILE = "iteration.json"
ITERATION_STATUS_FILE = "status.json"

STORE_SCHEME = "store:"
"""`store:<key>`: the object under `key` of whichever store the reader opened (see `store_reference`)."""

RESERVED_TOP_LEVEL = ".dpe"
"""First key segment kept for the store's own bookkeeping (the local backend's checksums)."""

MAX_KEY_BYTES = 1024
"""S3's limit on object names, applied to both backends so a key valid locally is valid in S3."""

_DNS_LABEL_RE = re.compile(DNS_LABEL_PATTERN)
_DNS_LABEL_MAX = 63
_FORBIDDEN_CHARS_RE = re.compile(r"[\x00-\x1f\x7f\\]")


def _check_segments(text: str, what: str) -> None:
    if text.startswith("/"):
        raise ValueError(f"{what} {text!r} must be relative (no leading '/')")
    if _FORBIDDEN_CHARS_RE.search(text):
        raise ValueError(f"{what} {text!r} contains a control character or a backslash")
    for segment in text.split("/"):
        if segment == "":
            raise ValueError(f"{what} {text!r} has an empty path segment ('//')")
        if segment in (".", ".."):
            raise ValueError(f"{what} {text!r} contains a '{segment}' segment")


def check_key(key: str) -> str:
    """Return `key` unchanged if it names an object; raise ValueError saying what is wrong."""
    if not isinstance(key, str) or key == "":
        raise ValueError(f"a store key must be a non-empty string, got {key!r}")
    if key.endswith("/"):
        raise ValueError(f"store key {key!r} ends with '/': that is a prefix, not an object")
    _check_segments(key, "store key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"store key is longer than {MAX_KEY_BYTES} bytes: {key[:80]!r}...")
    if key.split("/", 1)[0] == RESERVED_TOP_LEVEL:
        raise ValueError(f"store key {key!r} is under '{RESERVED_TOP_LEVEL}/', which the store reserves")
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` unchanged if it may select keys ('' selects all); raise ValueError if not.

    A prefix matches keys by plain string comparison, as in S3, so 'runs/a' also matches 'runs/ab/x'.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"a store prefix must be a string, got {prefix!r}")
    if prefix:
        _check_segments(prefix.removesuffix("/"), "store prefix")
        if "/" in prefix and prefix.split("/", 1)[0] == RESERVED_TOP_LEVEL:
            raise ValueError(
                f"store prefix {prefix!r} is under '{RESERVED_TOP_LEVEL}/', which the store reserves"
            )
    return prefix


def check_directory_prefix(prefix: str) -> str:
    """Return `prefix` if it is a non-empty prefix ending with '/', the only kind safe to delete."""
    check_prefix(prefix)
    if not prefix.endswith("/"):
        raise ValueError(f"store prefix {prefix!r} must end with '/' so it cannot also match sibling keys")
    return prefix


def _label(value: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > _DNS_LABEL_MAX or not _DNS_LABEL_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a DNS label (lowercase letters, digits and '-', "
            f"at most {_DNS_LABEL_MAX} characters, starting and ending with a letter or digit)"
        )
    return value


def _iteration(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"iteration must be an integer >= 0, got {k!r}")
    return k


def _stage(stage: StageName | str) -> StageName:
    try:
        return StageName(stage)
    except ValueError:
        names = ", ".join(s.value for s in StageName)
        raise ValueError(f"unknown stage {stage!r}; stages are {names}") from None


def _join(prefix: str, parts: tuple[str, ...]) -> str:
    if not parts:
        raise ValueError("a key needs at least one part after its prefix")
    for part in parts:
        if not isinstance(part, str) or part == "":
            raise ValueError(f"key part {part!r} must be a non-empty string")
        _check_segments(part, "key part")
    return check_key(prefix + "/".join(parts))


def run_prefix(namespace: str, run: str) -> str:
    """Prefix holding everything of one EvolutionRun."""
    return f"{RUNS_DIR}/{_label(namespace, 'namespace')}/{_label(run, 'run name')}/"


def run_key(namespace: str, run: str, *parts: str) -> str:
    """A run-level object, e.g. run_key(ns, run, 'report', 'index.html')."""
    return _join(run_prefix(namespace, run), parts)


def run_spec_key(namespace: str, run: str) -> str:
    """The copy of the EvolutionRun spec the run was started with."""
    return run_key(namespace, run, RUN_SPEC_FILE)


def executor_lease_key(namespace: str, run: str) -> str:
    """Who is executing the run on one machine now (`dpe run`), renewed while it lives."""
    return run_key(namespace, run, EXECUTOR_LEASE_FILE)


def weakness_table_key(namespace: str, run: str) -> str:
    """Per-iteration, per-capability accuracy table of the whole run."""
    return run_key(namespace, run, WEAKNESS_TABLE_FILE)


def report_prefix(namespace: str, run: str) -> str:
    """Prefix of the run report's files."""
    return f"{run_prefix(namespace, run)}{REPORT_DIR}/"


def shared_model_prefix(namespace: str, run: str, name: str) -> str:
    """Prefix of a built-in model as the run's first stage built it, for every later stage to read."""
    return _join(run_prefix(namespace, run), (MODELS_DIR, name)) + "/"


def shared_model_marker(namespace: str, run: str, name: str) -> str:
    """Written after every file of a shared model: its presence alone means the model is complete."""
    return run_key(namespace, run, MODELS_DIR, f"{name}.complete.json")


def iteration_prefix(namespace: str, run: str, k: int) -> str:
    """Prefix of iteration k (0 is the baseline evaluation of the base model)."""
    return f"{run_prefix(namespace, run)}{ITERATIONS_DIR}/{_iteration(k)}/"


def run_status_key(namespace: str, run: str) -> str:
    """The run's status as the local executor keeps it (the shape of the EvolutionRun's status)."""
    return run_key(namespace, run, RUN_STATUS_FILE)


def iteration_key(namespace: str, run: str, k: int) -> str:
    """Iteration k as the local executor started it: its index and input model (an Iteration's spec)."""
    return iteration_prefix(namespace, run, k) + ITERATION_FILE


def iteration_status_key(namespace: str, run: str, k: int) -> str:
    """Iteration k's status as the local executor keeps it (the shape of an Iteration's status)."""
    return iteration_prefix(namespace, run, k) + ITERATION_STATUS_FILE


def stage_prefix(namespace: str, run: str, k: int, stage: StageName | str) -> str:
    """Prefix of one stage's outputs in iteration k."""
    return f"{iteration_prefix(namespace, run, k)}{_stage(stage).value}/"


def stage_key(namespace: str, run: str, k: int, stage: StageName | str, *parts: str) -> str:
    """An object inside a stage's outputs, e.g. stage_key(ns, run, 1, 'score', 'kept.parquet')."""
    return _join(stage_prefix(namespace, run, k, stage), parts)


def result_key(namespace: str, run: str, k: int, stage: StageName | str) -> str:
    """The stage's result.json: written last, its presence alone means the stage completed."""
    return stage_key(namespace, run, k, stage, RESULT_FILE)


def shard_name(shard: int, of: int) -> str:
    """The directory name of shard `shard` of `of`, e.g. '2-of-8'."""
    for value, what in ((shard, "shard"), (of, "shard count")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{what} must be an integer, got {value!r}")
    if of < 1 or not 0 <= shard < of:
        raise ValueError(f"shard must satisfy 0 <= shard < count, got shard {shard} of {of}")
    return f"{shard}-of-{of}"


def shard_prefix(namespace: str, run: str, k: int, stage: StageName | str, shard: int, of: int) -> str:
    """Prefix of one shard's outputs inside a sharded stage."""
    return f"{stage_prefix(namespace, run, k, stage)}{SHARDS_DIR}/{shard_name(shard, of)}/"


def shard_key(
    namespace: str, run: str, k: int, stage: StageName | str, shard: int, of: int, *parts: str
) -> str:
    """An object inside one shard's outputs."""
    return _join(shard_prefix(namespace, run, k, stage, shard, of), parts)


def shard_result_key(namespace: str, run: str, k: int, stage: StageName | str, shard: int, of: int) -> str:
    """The shard's own result.json, written last by that shard."""
    return shard_key(namespace, run, k, stage, shard, of, RESULT_FILE)


def _local_root(storage: Storage) -> Path:
    assert storage.local is not None
    return Path(storage.local.path).absolute()


def store_uri(storage: Storage, key: str) -> str:
    """Where `key` lives, for status fields and logs: s3://bucket/prefix+key or file:///abs/path/key."""
    check_key(key)
    if storage.s3 is not None:
        return f"s3://{storage.s3.bucket}/{storage.s3.prefix}{key}"
    return (_local_root(storage) / key).as_uri()


def store_reference(storage: Storage, key: str) -> str:
    """How results and statuses name `key`: its s3:// URI in S3 (any S3 client reaches it), but
    `store:<key>` in a local store, so that a store directory copied or moved elsewhere still names
    its own objects rather than the original's files."""
    if storage.s3 is not None:
        return store_uri(storage, key)
    return STORE_SCHEME + check_key(key)


def key_from_uri(storage: Storage, uri: str) -> str:
    """The key that `store_uri` or `store_reference` turned into `uri`; ValueError if `uri` is elsewhere."""
    if uri.startswith(STORE_SCHEME):
        return check_key(uri.removeprefix(STORE_SCHEME))
    parsed = urlsplit(uri)
    if storage.s3 is not None:
        expected = f"s3://{storage.s3.bucket}/{storage.s3.prefix}"
        if parsed.scheme != "s3" or parsed.netloc != storage.s3.bucket or not uri.startswith(expected):
            raise ValueError(f"{uri!r} is not inside this store ({expected})")
        return check_key(uri[len(expected) :])
    root = _local_root(storage)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{uri!r} is not inside this store ({root.as_uri()}/)")
    path = Path(unquote(parsed.path))
    if not path.is_relative_to(root) or path == root:
        raise ValueError(f"{uri!r} is not inside this store ({root.as_uri()}/)")
    return check_key(path.relative_to(root).as_posix())
