"""Upper bounds of the spec's numbers, lists and strings.

Every count, size, duration and rate has a ceiling, so nonsense such as `shards: 200000` or a
thirty-digit sample count is refused where it is written instead of failing somewhere in a stage or
on the API server. The ceilings are generous: far above anything a run needs, low enough that no
stage meets a number it cannot handle. Kubernetes' own limits are taken as they are.
"""

from __future__ import annotations

MAX_INT64 = 2**63 - 1
"""Largest integer the API server stores; the bound of every integer without a tighter one."""
MAX_SEED = 2**32 - 1
"""Largest seed numpy accepts (seeds reach it through torch and TRL)."""

MAX_INDEXED_COMPLETIONS = 100_000
"""Kubernetes caps an Indexed Job at 100000 completions; shards and training nodes are completions,
and Job names keep room for a five-digit index (see dpe_operator.names.MAX_COMPLETION_INDEX)."""
MAX_GPUS_PER_NODE = 64
MAX_ITEMS = 1_000_000
"""Probe items, samples per iteration, training-set size, benchmark items, prompts per step."""
MAX_SAMPLES_PER_ITEM = 1024
"""Scoring answers per sample and GRPO completions per prompt."""
MAX_TOKENS = 1 << 20
"""Tokens in one answer or completion: beyond any model's context window."""
MAX_TOP_K = 1 << 20
"""Above every vocabulary size, so a larger top-k cuts nothing."""
MAX_TEMPERATURE = 10.0
MAX_LEARNING_RATE = 1.0
MAX_KL_BETA = 10.0
MAX_CLIP_EPSILON = 10.0
MAX_GRAD_NORM = 10_000.0
MAX_WEIGHT = 1000.0
"""Reward weights and the mixture's raw weights (relative weights: only their ratios matter)."""
MAX_STEPS = 1_000_000
"""GRPO steps per iteration."""
MAX_ITERATIONS = 1000
"""Iterations of a run; the status keeps a summary of each (the CRD bounds that list by the same)."""
MAX_ATTEMPTS = 100
"""Attempts of one stage, and Pod retries inside one Job (backoffLimit)."""
MAX_REGENERATIONS = 100
MAX_RESULTS_PER_QUERY = 100
MAX_IMAGE_SIDE = 4096
"""Images are upscaled to at least the minimum side: a larger one makes every image huge."""
MAX_CONCURRENCY = 4096
MAX_REQUESTS_PER_MINUTE = 10_000_000
MAX_TOKENS_PER_MINUTE = 10_000_000_000
MAX_REQUEST_SECONDS = 86_400.0
"""Timeout of one request to a model endpoint: a day."""
MAX_DURATION_SECONDS = 31_622_400
"""Deadlines, backoffs and toleration times: a leap year."""
MAX_BACKOFF_MULTIPLIER = 100.0
MAX_USD = 10_000_000.0
"""Budgets and spend, in US dollars."""
MAX_GPU_HOURS = 10_000_000.0
MAX_USD_PER_MILLION_TOKENS = 10_000.0
MAX_PRIOR_STRENGTH = float(MAX_ITEMS)
"""Pseudo-count of the mixture's prior: a count of probe items."""

MAX_LIST_ITEMS = 64
"""Tolerations and benchmarks (the CRD bounds both lists by the same)."""
MAX_MAP_ENTRIES = 64
"""Node selector labels and resource names."""
MAX_TEXT_LENGTH = 4096
"""Free text such as paths and artifact references (a Linux path is at most 4096 bytes)."""
MAX_URL_LENGTH = 2048
MAX_NAME_LENGTH = 200
"""Model names, image references' parts and regions."""
MAX_IMAGE_LENGTH = 1024
"""A container image reference (repository, tag and digest)."""
