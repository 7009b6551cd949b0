"""A scripted cast of agents behind the fake OpenAI server: plausible JSON per role, steerable per test.

`AgentScript` is a `FakeOpenAIServer` responder. It tells the roles apart by the "Role: ..." line
each agent prompt starts with, recognises attached pictures by their data URLs (tests register the
pictures they serve), and answers like a cooperative model would, unless a test changes a rule:
ratings per picture, validator verdicts in order, raw replies queued per role (malformed JSON, or
an `Outcome` such as a huge or dripping reply), latency per role. It counts calls per role and can pick out the server's requests of one role.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter, deque
from typing import Any

from dpe.llm import image_part

from dpe_testkit.openai_server import FakeOpenAIServer, Outcome, RecordedRequest, image_parts

MARKERS = {
    "planner": "planner",
    "image selector": "image_selector",
    "edit planner": "edit_planner",
    "picture describer": "picture_describer",
    "observer": "observer",
    "question generator": "question_generator",
    "validator": "validator",
}
"""The marker line's name -> the role name tests use (the observer is the generator's first stage;
the picture describer is the agents benchmark's re-creation of the reference's edit planning)."""
_MARKER = re.compile(r"^Role: (.+)$", re.MULTILINE)
_FORMAT = re.compile(r"^Question format: (\w+)$", re.MULTILINE)
_PROPOSED = re.compile(r"^Proposed answer:\n<data>\n(.*)\n</data>$", re.MULTILINE)
EMPTY_SEED = "nothing-to-find"
"""A seed question containing this makes the planner ask for searches that find nothing."""

RELATED_QUERY = "bar chart of monthly sales"
NEW_QUERY = "red arrow annotation"
EMPTY_QUERY = "query without results"
OBSERVATION = (
    "A bar chart with five vertical bars labelled Jan to May; the tallest bar is March at 42; "
    "a red circle marks the April bar and a label reads 'peak?' in the top-left corner."
)
QUESTIONS = {
    "multiple_choice": {
        "question": "Which month has the tallest bar?\nA. January\nB. March\nC. May\nD. April",
        "answer": "B",
        "difficulty": 2,
    },
    "numerical": {"question": "What value does the tallest bar show?", "answer": "42", "difficulty": 2},
    "free_text": {"question": "Which month is marked by the red circle?", "answer": "April", "difficulty": 1},
}
LOCAL_EDIT = {
    "selected": [1],
    "reasoning": "the first picture has the clearest bars",
    "operations": [
        {"op": "circle", "center": [0.6, 0.5], "radius": 0.15, "colour": "red", "width": 5},
        {"op": "label", "text": "peak?", "position": [0.05, 0.05], "size": 28},
    ],
}
GENERATIVE_EDIT = {
    "selected": [1, 2],
    "reasoning": "picture 1 is the scene, picture 2 supplies the arrow",
    "instruction": "Add the red arrow from picture 2 pointing at the April bar, 10% of the width long.",
}


def url_digest(url: str) -> str:
    """A short name for an attached picture's data URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def attached_digest(data: bytes) -> str:
    """The digest of `data` as the agents attach it (`image_part` encodes the same bytes the same way)."""
    return url_digest(image_part(data)["image_url"]["url"])


def first_text(body: dict[str, Any]) -> str:
    """The text of the first user message, where every agent prompt puts its marker."""
    for message in body.get("messages", []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return ""


def role_of(body: dict[str, Any]) -> str:
    match = _MARKER.search(first_text(body))
    if match is None:
        raise AssertionError(f"request without a role marker: {first_text(body)[:200]!r}")
    return MARKERS[match[1].strip()]


class AgentScript:
    """The responder; see the module docstring. Thread-safe: the server answers concurrently."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: dict[str, str] = {}
        self.ratings: dict[str, tuple[bool, float]] = {}
        self.default_rating: tuple[bool, float] = (True, 8.0)
        self.verdicts: deque[bool] = deque()
        self.queued: dict[str, deque[str | Outcome]] = {}
        self.latency: dict[str, float] = {}
        self.question_format = "multiple_choice"
        self.calls: Counter[str] = Counter()
        self.rated: Counter[str] = Counter()

    def register(self, name: str, digest: str) -> None:
        """Recognise the picture with this `attached_digest` as `name` when it is attached."""
        self.names[digest] = name

    def rate(self, name: str, usable: bool, score: float) -> None:
        self.ratings[name] = (usable, score)

    def queue(self, role: str, *replies: str | Outcome) -> None:
        """Serve these raw replies to `role`'s next calls, before answering normally."""
        self.queued.setdefault(role, deque()).extend(replies)

    def delay(self, body: dict[str, Any]) -> float:
        """Latency per role, for `FakeOpenAIServer(latency=...)`."""
        return self.latency.get(role_of(body), 0.0)

    def __call__(self, body: dict[str, Any]) -> str | Outcome:
        role = role_of(body)
        with self._lock:
            self.calls[role] += 1
            queued = self.queued.get(role)
            if queued:
                return queued.popleft()
        return json.dumps(getattr(self, f"_{role}")(body))

    def _planner(self, body: dict[str, Any]) -> dict[str, Any]:
        empty = EMPTY_SEED in first_text(body)
        return {
            "question_format": self.question_format.replace("_", " ").title(),
            "plan_summary": "Ask which month's bar is tallest, to practise reading bar heights.",
            "related_query": EMPTY_QUERY if empty else RELATED_QUERY,
            "new_element_query": EMPTY_QUERY if empty else NEW_QUERY,
            "edit_goal": "",
        }

    def _image_selector(self, body: dict[str, Any]) -> dict[str, Any]:
        """A rating for each attached picture, by its number."""
        ratings = []
        for number, url in enumerate(image_parts(body), start=1):
            name = self.names.get(url_digest(url), "unknown")
            with self._lock:
                self.rated[name] += 1
            usable, score = self.ratings.get(name, self.default_rating)
            ratings.append({"picture": number, "usable": usable, "score": score, "reason": f"{name} looks {'fine' if usable else 'unsuitable'}"})
        return {"ratings": ratings}

    def _edit_planner(self, body: dict[str, Any]) -> dict[str, Any]:
        return LOCAL_EDIT if '"operations"' in first_text(body) else GENERATIVE_EDIT

    def _picture_describer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"descriptions": [f"Picture {n}: {OBSERVATION}" for n in range(1, len(image_parts(body)) + 1)]}

    def _observer(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"description": OBSERVATION}

    def _question_generator(self, body: dict[str, Any]) -> dict[str, Any]:
        match = _FORMAT.search(first_text(body))
        assert match is not None
        return QUESTIONS[match[1]]

    def _validator(self, body: dict[str, Any]) -> dict[str, Any]:
        text = first_text(body)
        match = _PROPOSED.search(text)
        assert match is not None
        with self._lock:
            valid = self.verdicts.popleft() if self.verdicts else True
        reason = "every detail is visible" if valid else "the bar values are not legible in the picture"
        return {"answer": match[1].strip(), "valid": valid, "reason": reason}


def requests_of(server: FakeOpenAIServer, role: str) -> list[RecordedRequest]:
    """The server's answered chat requests of one role, in arrival order."""
    return [r for r in server.chat_requests if r.body is not None and role_of(r.body) == role and r.status == 200]
