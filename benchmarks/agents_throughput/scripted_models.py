"""The scripted models that answer both sides alike: the tests' agent script with the benchmark's
deterministic variety (search queries per seed, image types, ratings and verdicts per picture)."""

from __future__ import annotations

import itertools
import multiprocessing
import random
import re
from collections import Counter
from typing import Any

from dpe_testkit.agent_script import NEW_QUERY, RELATED_QUERY, AgentScript, first_text, role_of, url_digest
from dpe_testkit.openai_server import IMAGE_TOKENS as FAKE_IMAGE_TOKENS
from dpe_testkit.openai_server import default_usage, image_parts

from benchmarks.agents_throughput.scenario import MIX, ROLE_PROFILES, Scenario
from dpe.generation import stable_seed

IMAGE_TOKENS = 765
"""Prompt tokens billed per attached picture (a 512-px tile at high detail)."""
USABLE_SCORE_GIVEN = 8.0
UNUSABLE_SCORE_GIVEN = 4.0
VALIDATOR_REJECTIONS = ((0.04, 3), (0.10, 2), (0.25, 1))
"""(cumulative share of pictures, rejections before the validator accepts a question about it):
4% of pictures never get a valid question within three tries, 6% need three, 15% need two."""
SMALL_EDIT = [
    {"op": "circle", "center": [0.6, 0.5], "radius": 0.08, "colour": "red", "width": 1},
    {"op": "label", "text": "peak?", "position": [0.05, 0.05], "size": 8, "background": None},
]
SEED_TAG = re.compile(r"\(seed (\d+)\)")


def fraction(*parts: object) -> float:
    """A deterministic number in [0, 1) from names and numbers."""
    return stable_seed(*parts) / 2**63


def queries_for(topic: str) -> tuple[str, str]:
    """The planner's two search queries for a topic (a seed, or a fresh one)."""
    return f"{RELATED_QUERY} ({topic})", f"{NEW_QUERY} ({topic})"


class ScriptedModels(AgentScript):
    """The agent script with the benchmark's deterministic variety, identical for both sides.

    Each seed leads to its own search queries, so pictures never repeat; the planner names an image
    type drawn from the mixture (what the reference's planner is asked to do, at its best); ratings
    and validator verdicts depend only on the picture, so the same picture fares the same on both
    sides.
    """

    def __init__(self, scenario: Scenario, invented: multiprocessing.SimpleQueue[str] | None = None):
        super().__init__()
        self.scenario = scenario
        self.latency = {role: scenario.seconds(profile.latency_s) for role, profile in ROLE_PROFILES.items()}
        self.originals: set[str] = set()
        """Digests of found and seed pictures; any other picture is an edit output."""
        self._invented = invented
        """Digests of pictures the search service invented since, announced from its process."""
        self.validations: Counter[str] = Counter()
        self._fresh = itertools.count(1)

    def usage(self, request: dict[str, Any], content: str) -> tuple[int, int]:
        """Tokens as a provider bills them: pictures at full price, reasoning tokens included."""
        prompt, completion = default_usage(request, content)
        pictures = len(image_parts(request))
        prompt += pictures * (IMAGE_TOKENS - FAKE_IMAGE_TOKENS)
        return prompt, completion + ROLE_PROFILES[role_of(request)].reasoning_tokens

    def _topic(self, body: dict[str, Any]) -> str:
        match = SEED_TAG.search(first_text(body))
        return f"seed {match[1]}" if match else f"fresh {next(self._fresh)}"

    def _planner(self, body: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic(body)
        rng = random.Random(stable_seed(self.scenario.seed, "type", topic))
        image_type = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        related, new_element = queries_for(topic)
        return {**super()._planner(body), "image_type": image_type.value, "related_query": related, "new_element_query": new_element}

    def delay(self, body: dict[str, Any]) -> float:
        """The role's latency, longer by each picture beyond the first for a role that judges each."""
        profile = ROLE_PROFILES[role_of(body)]
        extra = max(0, len(image_parts(body)) - 1) * profile.per_extra_picture_s
        return self.latency[role_of(body)] + self.scenario.seconds(extra)

    def _image_selector(self, body: dict[str, Any]) -> dict[str, Any]:
        """A verdict on each attached picture, the same for a picture whichever request shows it."""
        with self._lock:
            while self._invented is not None and not self._invented.empty():
                self.originals.add(self._invented.get())
        ratings = []
        for number, url in enumerate(image_parts(body), start=1):
            digest = url_digest(url)
            share = self.scenario.usable_share if digest in self.originals else self.scenario.edited_usable_share
            usable = fraction(self.scenario.seed, "rating", digest) < share
            ratings.append({"picture": number, "usable": usable, "score": USABLE_SCORE_GIVEN if usable else UNUSABLE_SCORE_GIVEN,
                            "reason": "clear and on topic" if usable else "lacks the detail the plan needs"})
        return {"ratings": ratings}

    def _edit_planner(self, body: dict[str, Any]) -> dict[str, Any]:
        """The script's edit, drawn to the scale of the small pictures: its 28-pixel label on a
        white box would cover much of a 128x96 picture and make edits of different pictures look
        alike to the near-duplicate check."""
        plan = super()._edit_planner(body)
        return {**plan, "operations": SMALL_EDIT} if "operations" in plan else plan

    def _validator(self, body: dict[str, Any]) -> dict[str, Any]:
        digest = attached_digest_of(body)
        with self._lock:
            seen = self.validations[digest]
            self.validations[digest] += 1
        draw = fraction(self.scenario.seed, "validator", digest)
        rejections = next((count for share, count in VALIDATOR_REJECTIONS if draw < share), 0)
        verdict = super()._validator(body)
        if seen < rejections:
            verdict.update(valid=False, reason="the detail the question asks about is not legible")
        return verdict


def attached_digest_of(body: dict[str, Any]) -> str:
    """The digest of the request's single attached picture (as `attached_digest` names it)."""
    return url_digest(image_parts(body)[0])
