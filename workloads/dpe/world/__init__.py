"""The capability world: seeded procedural images with questions and verified answers.

No network and no datasets are available at run time, so the project draws its own: for each of
the 12 capability types, templates that sample parameters, ask a question, solve it from the
parameters and draw the picture with PIL. Every record keeps its generator, template, parameters,
seed and index, and `verify` recomputes the answer from them. Same arguments, same bytes.

Difficulty runs from 1 (easiest) to 3 (hardest). The quickstart trains a tiny vision-language model
(about 0.2 M parameters, 56-64 px images, 4 image tokens), which needs blind spots it can and cannot
close, so types differ on purpose. Coarse templates (level 1 only, 2-4 options, one-word answers)
show their answer in cues a tiny model can learn: dominant colour, which half is bright, one big
shape, one to three big blobs, day or night sky. Every other template needs fine detail (text,
digits, thin lines, small objects) that a tiny model cannot read.

Coarse templates per type:

- geometric: `shape_kind` (one big circle, square or triangle)
- medical: `lesion_side` (a big bright spot in the left or right half)
- chart_graph: `tallest_bar`, `pie_largest` (answers are colours), `line_trend` (up or down)
- text_dense: none; even level 1 (big_word) needs reading
- diagram: `arrow_direction` (one thick arrow)
- math_formula: none; even level 1 (evaluate_expression) needs reading digits
- map: `water_side` (which side is blue)
- natural_scene: `time_of_day` (bright or dark sky), `weather` (sky and ground colours)
- artistic: `dominant_colour`
- everyday_object: `count_balls` (one to three big balls), `object_colour`
- architectural: `floor_count` (one to three tall floors: the building's height)
- mixed: `brighter_half`

So a level-1 dataset has ten learnable types and two (text_dense, math_formula) that stay blind
spots for a tiny model; levels 2-3 are blind spots for it everywhere, and real work for real models.
"""

from dpe.world.registry import TEMPLATES, coarse_templates, find_template
from dpe.world.sampler import (
    GENERATOR,
    WORLD_SOURCE,
    generate,
    generate_for_quota,
    generate_stream,
    sample_at,
    sample_from_template,
    sample_id,
    verify,
)
from dpe.world.template import LEVELS, Template

__all__ = [
    "GENERATOR",
    "LEVELS",
    "TEMPLATES",
    "WORLD_SOURCE",
    "Template",
    "coarse_templates",
    "find_template",
    "generate",
    "generate_for_quota",
    "generate_stream",
    "sample_at",
    "sample_from_template",
    "sample_id",
    "verify",
]
