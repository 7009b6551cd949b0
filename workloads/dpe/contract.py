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
