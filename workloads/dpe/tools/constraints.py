"""Per capability type: which edits keep an image truthful, as data both editors consult.

A question about an angle is only as good as the angle in the picture, so precision types
(geometry, medical imagery, formulas) accept annotations and little else, while natural scenes and
artwork may change freely. The generative editor receives these rules inside its prompt; the local
editor enforces them on its typed operations before touching a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

from dpe.taxonomy import CapabilityType

ANNOTATIONS = frozenset({"circle", "box", "arrow", "label"})
"""Local operations that add marks on top of the image without changing what it shows."""
FRAMING = frozenset({"crop", "zoom"})
"""Local operations that choose a region, keeping proportions."""
ALL_LOCAL_OPERATIONS = ANNOTATIONS | FRAMING | {"adjust", "rotate", "composite"}

AVOID = (
    "low quality, blur, distortion, unnatural blending, unclear edges, mismatched colour or lighting, "
    "deformed shapes, jagged edges, low resolution, noise, over- or under-exposure"
)
"""Defects every generated edit must avoid, written into the instruction: an edit request has no
negative prompt."""

PROMPT_TEMPLATE = """{instruction}

Constraints for this {name} image ({description}):
- You may change: {allowed}.
- Keep exactly as they are: {preserve}.
- Change nothing the instruction above does not ask for.
- The result must look like a clean, realistic {name} image. Avoid {avoid}."""


@dataclass(frozen=True)
class EditPolicy:
    """What an edit of one capability type may and may not change."""

    allowed: str
    """Changes a generative edit may make, in words."""
    preserve: str
    """What must stay untouched, in words."""
    local_operations: frozenset[str]
    """Local editor operations permitted for this type."""


POLICIES: dict[CapabilityType, EditPolicy] = {
    CapabilityType.geometric: EditPolicy(
        "labels, annotations, colours of lines and fills, measurement marks",
        "every shape, angle, length and proportion",
        ANNOTATIONS | {"adjust"},
    ),
    CapabilityType.medical: EditPolicy(
        "annotations, markers and contrast",
        "all anatomy and every structure shown",
        ANNOTATIONS | {"adjust"},
    ),
    CapabilityType.chart_graph: EditPolicy(
        "axis labels, legend, colours and data labels",
        "the data, proportions, scale and trends",
        ANNOTATIONS | FRAMING | {"adjust"},
    ),
    CapabilityType.text_dense: EditPolicy(
        "only the specific text the instruction names",
        "layout, fonts and all other text",
        ANNOTATIONS | FRAMING | {"adjust"},
    ),
    CapabilityType.diagram: EditPolicy(
        "labels, colours, arrows and text",
        "the flow, the connections and the topology",
        ANNOTATIONS | FRAMING | {"adjust"},
    ),
    CapabilityType.math_formula: EditPolicy(
        "only variables, numbers, subscripts and superscripts",
        "the structure of every expression, which must stay mathematically valid",
        ANNOTATIONS,
    ),
    CapabilityType.map: EditPolicy(
        "markers, labels, annotations and zone colours",
        "geography, distances and scale",
        ANNOTATIONS | FRAMING | {"adjust"},
    ),
    CapabilityType.natural_scene: EditPolicy(
        "objects, weather, lighting and atmosphere",
        "realism and perspective",
        ALL_LOCAL_OPERATIONS,
    ),
    CapabilityType.artistic: EditPolicy(
        "style, composition, colours and content, freely",
        "the coherence of the artwork",
        ALL_LOCAL_OPERATIONS,
    ),
    CapabilityType.everyday_object: EditPolicy(
        "object colours and patterns, similar objects added or removed, quantities, background",
        "the realism and plausible sizes of objects",
        ALL_LOCAL_OPERATIONS,
    ),
    CapabilityType.architectural: EditPolicy(
        "details, materials, surroundings and lighting",
        "the structure and perspective of buildings",
        ANNOTATIONS | FRAMING | {"adjust", "composite"},
    ),
    CapabilityType.mixed: EditPolicy(
        "decorative parts, flexibly",
        "precise content such as text, numbers, charts and figures",
        ALL_LOCAL_OPERATIONS,
    ),
}


def constrained_prompt(instruction: str, capability: CapabilityType) -> str:
    """The instruction wrapped in its type's constraints, as sent to a generative editor."""
    policy = POLICIES[capability]
    return PROMPT_TEMPLATE.format(
        instruction=instruction.strip(),
        name=capability.value.replace("_", " "),
        description=capability.description,
        allowed=policy.allowed,
        preserve=policy.preserve,
        avoid=AVOID,
    )
