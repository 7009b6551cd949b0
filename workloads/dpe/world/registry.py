"""Every template of the capability world, by capability type, in a fixed order.

The order matters: which template a sample uses is drawn from these tuples, so reordering them
changes every generated dataset. Append new templates at the end of a type's tuple.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dpe.taxonomy import CapabilityType
from dpe.world import (
    architectural,
    artistic,
    chart_graph,
    diagram,
    everyday_object,
    geometric,
    maps,
    math_formula,
    medical,
    mixed,
    natural_scene,
    text_dense,
)
from dpe.world.template import Template

TEMPLATES: Mapping[CapabilityType, tuple[Template, ...]] = MappingProxyType(
    {
        CapabilityType.geometric: geometric.TEMPLATES,
        CapabilityType.medical: medical.TEMPLATES,
        CapabilityType.chart_graph: chart_graph.TEMPLATES,
        CapabilityType.text_dense: text_dense.TEMPLATES,
        CapabilityType.diagram: diagram.TEMPLATES,
        CapabilityType.math_formula: math_formula.TEMPLATES,
        CapabilityType.map: maps.TEMPLATES,
        CapabilityType.natural_scene: natural_scene.TEMPLATES,
        CapabilityType.artistic: artistic.TEMPLATES,
        CapabilityType.everyday_object: everyday_object.TEMPLATES,
        CapabilityType.architectural: architectural.TEMPLATES,
        CapabilityType.mixed: mixed.TEMPLATES,
    }
)


def find_template(capability_type: CapabilityType, name: str) -> Template | None:
    """The template of this type with this name, or None when the world has no such template."""
    return next((t for t in TEMPLATES[capability_type] if t.name == name), None)


def coarse_templates() -> dict[CapabilityType, list[str]]:
    """Names of the templates a tiny model can learn at 56-64 px, per type (empty lists kept)."""
    return {kind: [t.name for t in templates if t.coarse] for kind, templates in TEMPLATES.items()}
