"""The simulated world in real seconds and tokens (scaled by --time-scale at run time): the roles'
latencies, the endpoint's limits, one run's configuration, and the quotas both sides fill."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from dpe.image_quality import Thresholds
from dpe.taxonomy import CapabilityType


@dataclass(frozen=True)
class RoleProfile:
    """How one role's model behaves: seconds per reply and hidden reasoning tokens billed per reply,
    and the seconds each picture beyond the first adds to a reply that judges every picture."""

    latency_s: float
    reasoning_tokens: int
    per_extra_picture_s: float = 0.0


ROLE_PROFILES: dict[str, RoleProfile] = {
    "planner": RoleProfile(20.0, 1500),
    "image_selector": RoleProfile(4.0, 0, per_extra_picture_s=1.5),
    "picture_describer": RoleProfile(6.0, 400, per_extra_picture_s=2.0),
    "edit_planner": RoleProfile(20.0, 1500),
    "observer": RoleProfile(12.0, 600),
    "question_generator": RoleProfile(18.0, 1500),
    "validator": RoleProfile(15.0, 1200),
}
"""The reference's models: thinking Claude (planner, validator), Gemini 2.5 Pro (edit planner), o3
(observer and generator), qwen3-vl-plus (selector); latencies typical of such models' replies. A
selector reply rating several pictures writes one short verdict (60-80 tokens) per picture: at the
50 tokens a second such a model decodes, plus the picture's prefill, about 1.5 s each; the rest of
the 4 s of a one-picture reply (queueing, prefill, the first token) is paid once per call. The
picture describer is the reference's alone (its edit planner first describes the candidates, three
to a call): 3-5 sentences a picture (about 100 tokens) and a short thought, from the edit planner's
model, about 2 s a picture beyond the first and 6 s for one, so a call of three takes half the edit
planner's 20 s."""
REFERENCE_ONLY_ROLES = frozenset({"picture_describer"})
"""Roles only the reference calls (ours' edit planner looks at the pictures in its one call)."""
SEARCH_API_S = 1.5
DOWNLOAD_S = 0.5
EDIT_S = 15.0
"""An image-edit model's time per edit (the reference's qwen-image-edit-plus takes this order)."""
SMALL_PICTURES = Thresholds(min_side=128, min_bytes=2_000)
"""The download gate for the benchmark's small pictures (the real gate wants 512 px and 20 KB)."""


@dataclass(frozen=True)
class EndpointLimits:
    """The endpoint's published limits, enforced by the server and configured in our clients."""

    requests_per_minute: int = 500
    tokens_per_minute: int = 800_000
    max_concurrency: int = 64
    server_error_every: int = 50
    """Every n-th admitted request fails with 503 (2%)."""
    window_s: float = 10.0
    """Span over which the server enforces the per-minute quotas (bursts up to this much). Never
    less than our limiter's one-second bucket in wall-clock time: that bucket is not time-scaled,
    and a server window compressed below it would refuse bursts a real one accepts."""


@dataclass(frozen=True)
class Scenario:
    """One benchmark configuration; everything a run depends on."""

    samples: int = 150
    time_scale: float = 0.08
    seed: int = 7
    limits: EndpointLimits = field(default_factory=EndpointLimits)
    usable_share: float = 0.3
    """Share of found pictures the selector calls usable (the rest need an edit)."""
    edited_usable_share: float = 0.9
    """Share of edited pictures the selector calls usable."""
    results_per_query: int = 2
    max_regenerations: int = 2
    reference_workers: tuple[int, ...] = (10, 20, 32, 64, 128)
    """The reference's worker counts swept (it ships with 10); ours is compared with the best."""

    def seconds(self, real_seconds: float) -> float:
        """A real duration on the compressed clock."""
        return real_seconds * self.time_scale

    def per_scaled_minute(self, per_minute: int) -> int:
        """A per-minute quota on the compressed clock."""
        return max(1, round(per_minute / self.time_scale))


MIX: dict[CapabilityType, float] = {
    CapabilityType.chart_graph: 0.35,
    CapabilityType.geometric: 0.25,
    CapabilityType.text_dense: 0.20,
    CapabilityType.diagram: 0.12,
    CapabilityType.map: 0.08,
}
"""Mixture weights as a diagnosis would give them."""


def quotas_for(samples: int) -> dict[CapabilityType, int]:
    """Per-type quotas summing to exactly `samples` (largest remainders get the rounding); a type
    whose share rounds to nothing gets no quota, as in the reference's quota manager."""
    raw = {t: samples * w for t, w in MIX.items()}
    quotas = {t: math.floor(v) for t, v in raw.items()}
    by_remainder = sorted(raw, key=lambda t: (quotas[t] - raw[t], list(MIX).index(t)))
    for capability in by_remainder[: samples - sum(quotas.values())]:
        quotas[capability] += 1
    return {t: q for t, q in quotas.items() if q > 0}


def weakness_brief(quotas: Mapping[CapabilityType, int]) -> str:
    """The weakness prompt both sides hand to the planner and generator."""
    total = sum(quotas.values())
    lines = ["[Model Weakness Analysis]"]
    for capability, quota in sorted(quotas.items(), key=lambda item: -item[1]):
        lines.append(f"PRIORITY [{capability.value}] ({quota / total:.0%} of the samples): {capability.description}")
    return "\n".join(lines)
