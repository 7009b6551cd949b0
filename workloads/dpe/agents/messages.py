"""The messages each agent receives, built from its prompt file and the sample's data.

Pure functions: data in, chat messages out. The prompt wording lives in `dpe/prompts/agents/`;
values are inserted with `str.format`, so braces inside questions, briefs or observations are never
read as placeholders. Every value another model wrote (plans, observations, questions, answers,
edits, ratings, briefs, seed items, which may be generated samples) goes between the `<data>` lines
of its prompt through `as_data`, so it reads as material, never as instructions to the agent. The
weakness brief reaches both the planner and the question generator.
Pictures arrive as ready `image_url` parts (`dpe.llm.image_part`): encoding a large one takes tens
of milliseconds, so the pipeline encodes each picture once, off the event loop, and reuses the part.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dpe.agents.replies import MAX_FREE_TEXT_ANSWER_WORDS, LocalEditPlan, Plan, QuestionAnswer
from dpe.agents.roles import agent_prompt
from dpe.agents.selection import Rated
from dpe.generation import SampleTask
from dpe.llm import Message, as_data, schema_json
from dpe.taxonomy import CapabilityType, QuestionFormat
from dpe.tools.constraints import POLICIES

ImagePart = dict[str, Any]
"""An `image_url` message part made by `dpe.llm.image_part`."""

NONE = "(none)"
"""Stands in for an empty value, so a prompt never shows a bare label."""
NO_BRIEF = "(no focus areas given: make a generally useful, challenging question)"


def _user(text: str, images: Sequence[ImagePart] = ()) -> list[Message]:
    """One user message: the pictures first, then the text."""
    if not images:
        return [{"role": "user", "content": text}]
    return [{"role": "user", "content": [*images, {"type": "text", "text": text}]}]


def _type_fields(capability: CapabilityType) -> dict[str, str]:
    return {"capability_type": capability.value, "capability_description": capability.description}


def _plan_fields(plan: Plan) -> dict[str, str]:
    return {
        "plan_summary": as_data(plan.plan_summary),
        "question_format": plan.question_format.value,
        "edit_goal": as_data(plan.edit_goal) or NONE,
    }


def _brief(task: SampleTask) -> str:
    return as_data(task.brief.strip()) or NO_BRIEF


def edits_text(operations: Sequence[dict[str, Any]]) -> str:
    """The edit operations as applied, one JSON object a line, for the generator and the validator."""
    return as_data("\n".join(json.dumps(operation, sort_keys=True) for operation in operations)) or NONE


def planner(task: SampleTask, seed_image: ImagePart | None) -> list[Message]:
    """The planner sees the assigned type, the brief and the seed (its picture too, when readable)."""
    seed = task.seed
    if seed is None:
        seed_section = agent_prompt("parts/scratch").strip()
    else:
        part = "parts/seed_divergent" if task.divergent else "parts/seed_related"
        seed_format = seed.question_format.value if seed.question_format is not None else "unknown"
        seed_section = (
            agent_prompt(part)
            .format(question=as_data(seed.question), answer=as_data(seed.answer), question_format=seed_format)
            .strip()
        )
    text = agent_prompt("planner").format(
        **_type_fields(task.capability_type), seed_section=seed_section, brief=_brief(task)
    )
    return _user(text, [seed_image] if seed_image is not None else [])


def selector(plan: Plan, capability: CapabilityType, threshold: float, images: Sequence[ImagePart]) -> list[Message]:
    """One rating request for several pictures, each shown after its number, each to be rated on its own."""
    text = agent_prompt("image_selector").format(
        **_type_fields(capability), **_plan_fields(plan), threshold=f"{threshold:g}", count=len(images)
    )
    content: list[dict[str, Any]] = []
    for number, image in enumerate(images, start=1):
        content.append({"type": "text", "text": f"Picture {number}"})
        content.append(image)
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def edit_planner(
    plan: Plan,
    capability: CapabilityType,
    shortlist: Sequence[tuple[Rated, ImagePart]],
    *,
    local: bool,
    refusal: str | None,
) -> list[Message]:
    """The shortlisted pictures, numbered, each with its rating; then the edit request.

    With `local`, the reply must be typed operations (their JSON schema is shown); otherwise an
    instruction in words. `refusal` is the editor's complaint about the previous instruction.
    """
    policy = POLICIES[capability]
    if local:
        output_rules = agent_prompt("parts/edit_local").format(
            operations=", ".join(sorted(policy.local_operations)),
            schema=schema_json(LocalEditPlan),
        )
    else:
        output_rules = agent_prompt("parts/edit_generative").format()
    refused = "" if refusal is None else agent_prompt("parts/edit_refused").format(refusal=as_data(refusal))
    text = agent_prompt("edit_planner").format(
        **_type_fields(capability),
        **_plan_fields(plan),
        allowed=policy.allowed,
        preserve=policy.preserve,
        refusal=refused,
        output_rules=output_rules.strip(),
    )
    content: list[dict[str, Any]] = []
    for number, (item, image) in enumerate(shortlist, start=1):
        if item.rating is None:
            label = f"Picture {number} (not rated)"
        else:
            reason = as_data(item.rating.reason) or NONE
            label = f"Picture {number} (score {item.rating.score:g}/10), the selector's reason:\n<data>\n{reason}\n</data>"
        content.append({"type": "text", "text": label})
        content.append(image)
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def observer(image: ImagePart) -> list[Message]:
    """The first stage of the question generator: look at the picture and describe it."""
    return _user(agent_prompt("observer").format(), [image])


def generator(
    task: SampleTask,
    plan: Plan,
    observation: str,
    operations: Sequence[dict[str, Any]],
    rejections: Sequence[tuple[QuestionAnswer, str]],
) -> list[Message]:
    """The second stage, text only: question and answer from the observation, plan and brief.

    Earlier rejected questions and the validator's reasons are shown so the next one differs.
    """
    reference = ""
    if task.seed is not None:
        reference = agent_prompt("parts/reference").format(question=as_data(task.seed.question))
    rejected = ""
    if rejections:
        listed = "\n".join(f"- {qa.question!r} (answer {qa.answer!r}): {reason}" for qa, reason in rejections)
        rejected = agent_prompt("parts/rejections").format(rejections=as_data(listed))
    text = agent_prompt("question_generator").format(
        **_type_fields(task.capability_type),
        **_plan_fields(plan),
        observation=as_data(observation),
        edits=edits_text(operations),
        brief=_brief(task),
        reference=reference,
        rejections=rejected,
        max_words=MAX_FREE_TEXT_ANSWER_WORDS,
    )
    return _user(text)


def validator(
    image: ImagePart, question_format: QuestionFormat, qa: QuestionAnswer, operations: Sequence[dict[str, Any]]
) -> list[Message]:
    """The validator sees the picture, the question, the proposed answer and the edits made."""
    text = agent_prompt("validator").format(
        question_format=question_format.value,
        question=as_data(qa.question),
        answer=as_data(qa.answer),
        edits=edits_text(operations),
    )
    return _user(text, [image])
