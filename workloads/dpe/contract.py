"""Names the operator and the workloads must agree on, in a module light enough for both.

The operator builds Jobs that the stage commands run in; neither side may import the other's heavy
dependencies (the operator never imports torch or the S3 client), so the handful of values that
cross the boundary live here, once.
"""

S3_ACCESS_KEY_ENV = "DPE_S3_ACCESS_KEY"
"""Environment variable holding the S3 access key id (in a Job: filled from credentialsSecret)."""
S3_SECRET_KEY_ENV = "DPE_S3_SECRET_KEY"
"""Environment variable holding the S3 secret access key (in a Job: filled from credentialsSecret)."""
CACHE_ENV = "DPE_CACHE_DIR"
"""Where models fetched from the store or built in are cached on the machine."""
PERMANENT_EXIT = 3
"""Exit status of a stage that failed in a way no retry can fix (invalid spec, missing model, refused credentials)."""


def stage_argv(stage: str, run_file: str, iteration: int, model_uri: str, *, store: str | None = None,
               shard: str | None = None, merge: bool = False) -> list[str]:
    """The arguments of `dpe stage STAGE ...` after the program: the one way both executors start a stage.

    `shard` is `INDEX/COUNT` (in an Indexed Job the index may be a `$(VAR)` the kubelet expands);
    `merge` asks for the step that combines a sharded stage's shards.
    """
    if shard is not None and merge:
        raise ValueError("a stage invocation runs one shard or the merge, not both")
    argv = ["stage", stage, "--run", run_file, "--iteration", str(iteration), "--model", model_uri]
    if store is not None:
        argv += ["--store", store]
    if shard is not None:
        argv += ["--shard", shard]
    if merge:
        argv.append("--merge")
    return argv
