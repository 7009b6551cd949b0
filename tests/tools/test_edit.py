"""The local editor's pixels and echoes, validation at the border, and the generative editor."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
import pytest
from dpe.image_quality import PNG_SIGNATURE
from dpe.retry import Backoff
from dpe.secrets import secret_env_name
from dpe.spec import EditTool, SecretKeyRef
from dpe.taxonomy import CapabilityType
from dpe.tools.constraints import ALL_LOCAL_OPERATIONS, POLICIES, constrained_prompt
from dpe.tools.edit import (
    EditInstruction,
    EditResult,
    InvalidEdit,
    LocalEditor,
    OpenAIImageEditor,
    open_editor,
    parse_instruction,
)
from dpe.tools.retry import PermanentToolError, Retrying, ToolUnavailable
from PIL import Image
from dpe_testkit.images_server import COLOURS, ImagesServer
from dpe_testkit.pictures import encode, solid

SIZE = (400, 300)
WHITE = (255, 255, 255)
RED = (255, 0, 0)
QUADRANTS = {
    "top_left": (200, 0, 0),
    "top_right": (0, 200, 0),
    "bottom_left": (0, 0, 200),
    "bottom_right": (200, 200, 0),
}


def _quadrants() -> bytes:
    image = Image.new("RGB", SIZE)
    half_w, half_h = SIZE[0] // 2, SIZE[1] // 2
    corners = [(0, 0), (half_w, 0), (0, half_h), (half_w, half_h)]
    for colour, (x, y) in zip(QUADRANTS.values(), corners, strict=True):
        image.paste(colour, (x, y, x + half_w, y + half_h))
    return encode(image)


def _colours(image: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in np.unique(np.asarray(image).reshape(-1, 3), axis=0)}


def _edit(
    operations: list[dict[str, Any]], images: list[bytes] | None = None, **fields: Any
) -> tuple[Image.Image, EditResult]:
    instruction = parse_instruction({"operations": operations, **fields})
    result = asyncio.run(LocalEditor().edit(images or [encode(solid(WHITE, SIZE))], instruction))
    assert result.provider == "local" and len(result.images) == 1
    assert result.images[0].startswith(PNG_SIGNATURE)
    return Image.open(io.BytesIO(result.images[0])).convert("RGB"), result


def test_circle_is_drawn_where_the_echo_says() -> None:
    image, result = _edit([{"op": "circle", "center": [0.25, 0.5], "radius": 0.1, "colour": "red", "width": 3}])
    assert result.operations == [
        {
            "op": "circle",
            "center": [0.25, 0.5],
            "radius": 0.1,
            "colour": [255, 0, 0],
            "width": 3,
            "pixels": {"center": [100, 150], "radius": 30},
            "image_size": [400, 300],
        }
    ]
    assert image.getpixel((100 + 29, 150)) == RED
    assert image.getpixel((100, 150 - 29)) == RED
    assert image.getpixel((100, 150)) == WHITE
    assert image.getpixel((100 + 40, 150)) == WHITE


def test_box_and_arrow_markers() -> None:
    image, result = _edit(
        [
            {"op": "box", "box": [0.1, 0.1, 0.5, 0.5], "colour": "#00ff00", "width": 2},
            {"op": "arrow", "start": [0.6, 0.9], "end": [0.9, 0.6], "colour": [0, 0, 255], "width": 4},
        ]
    )
    assert result.operations[0]["pixels"] == [40, 30, 200, 150]
    assert image.getpixel((40, 30)) == (0, 255, 0)
    assert image.getpixel((120, 90)) == WHITE
    assert result.operations[1]["pixels"] == {"start": [240, 270], "end": [360, 180]}
    assert image.getpixel((300, 225)) == (0, 0, 255)
    assert image.getpixel((355, 186)) == (0, 0, 255)


def test_label_writes_text_on_its_background() -> None:
    image, result = _edit(
        [{"op": "label", "text": "AB", "position": [0.5, 0.5], "size": 40, "colour": "black", "background": "white"}],
        [encode(solid((0, 0, 200), SIZE))],
    )
    left, top, right, bottom = result.operations[0]["pixels"]
    assert 200 <= left < right and 150 <= top < bottom
    inside = {image.getpixel((x, y)) for x in range(left, right) for y in range(top, bottom)}
    assert (0, 0, 0) in inside and WHITE in inside
    assert image.getpixel((10, 10)) == (0, 0, 200)


def test_crop_and_zoom_choose_the_region_they_record() -> None:
    cropped, result = _edit([{"op": "crop", "box": [0.5, 0.0, 1.0, 0.5]}], [_quadrants()])
    assert cropped.size == (200, 150)
    assert result.operations[0]["pixels"] == [200, 0, 400, 150]
    assert _colours(cropped) == {QUADRANTS["top_right"]}

    zoomed, result = _edit([{"op": "zoom", "center": [1.0, 1.0], "factor": 2}], [_quadrants()])
    assert zoomed.size == SIZE
    assert result.operations[0]["pixels"] == [200, 150, 400, 300]
    assert zoomed.getpixel((5, 5)) == QUADRANTS["bottom_right"]
    assert zoomed.getpixel((395, 295)) == QUADRANTS["bottom_right"]


@pytest.mark.parametrize(
    ("degrees", "expand", "size"), [(90, True, (300, 400)), (90, False, (400, 300)), (45, True, (496, 496))]
)
def test_rotation_sizes(degrees: float, expand: bool, size: tuple[int, int]) -> None:
    image, result = _edit([{"op": "rotate", "degrees": degrees, "expand": expand}], [_quadrants()])
    assert image.size == size
    assert result.operations[0]["image_size"] == list(size)


def test_quarter_turn_is_counter_clockwise() -> None:
    image, _ = _edit([{"op": "rotate", "degrees": 90}], [_quadrants()])
    assert image.getpixel((5, 5)) == QUADRANTS["top_right"]


def test_adjust_factors() -> None:
    dark, _ = _edit([{"op": "adjust", "brightness": 0}], [_quadrants()])
    assert _colours(dark) == {(0, 0, 0)}
    grey, result = _edit([{"op": "adjust", "saturation": 0}], [_quadrants()])
    assert all(r == g == b for r, g, b in _colours(grey))
    assert result.operations[0] == {
        "op": "adjust",
        "brightness": 1.0,
        "contrast": 1.0,
        "saturation": 0.0,
        "sharpness": 1.0,
        "image_size": [400, 300],
    }


def test_composite_pastes_the_second_image_scaled_with_alpha() -> None:
    base, overlay = encode(solid(WHITE, SIZE)), encode(solid(RED, (100, 50)))
    image, result = _edit([{"op": "composite", "image": 2, "center": [0.5, 0.5], "scale": 0.25}], [base, overlay])
    assert result.operations[0]["pixels"] == [150, 125, 250, 175]
    assert image.getpixel((200, 150)) == RED
    assert image.getpixel((149, 150)) == WHITE
    faded, _ = _edit([{"op": "composite", "center": [0.5, 0.5], "scale": 0.25, "alpha": 0.5}], [base, overlay])
    r, g, b = np.asarray(faded)[150, 200]
    assert r == 255 and 120 <= g <= 135 and g == b


def test_local_edits_are_deterministic() -> None:
    operations: list[dict[str, Any]] = [
        {"op": "rotate", "degrees": 30},
        {"op": "label", "text": "x = 3", "position": [0.1, 0.1]},
    ]
    first = _edit(operations, [_quadrants()])[1]
    second = _edit(operations, [_quadrants()])[1]
    assert first == second


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"operations": [{"op": "blur", "radius": 3}]}, ["operations.0", "'blur'"]),
        ({"operations": [{"op": "crop", "box": [0, 0, 1.5, 1]}]}, ["operations.0.crop.box.2"]),
        ({"operations": [{"op": "crop", "box": [0.6, 0, 0.4, 1]}]}, ["operations.0.crop.box", "left < right"]),
        (
            {"operations": [{"op": "circle", "center": [0.5, 0.5], "radius": 0.1, "colour": "mauvish"}]},
            ["operations.0.circle.colour", "mauvish"],
        ),
        (
            {"operations": [{"op": "circle", "center": [0.5, 0.5], "radius": 0.1, "bogus": 1}]},
            ["operations.0.circle.bogus"],
        ),
        ({"operations": [{"op": "zoom", "center": [0.5, 0.5], "factor": 0.5}]}, ["operations.0.zoom.factor"]),
        ({"operations": [{"op": "arrow", "start": [0.5, 0.5], "end": [0.5, 0.5]}]}, ["operations.0.arrow", "differ"]),
        ({"operations": [], "outputs": 9}, ["outputs"]),
        ({"capability_type": "spaceship"}, ["capability_type"]),
    ],
)
def test_invalid_instructions_name_the_field(data: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(InvalidEdit) as raised:
        parse_instruction(data)
    for name in names:
        assert name in str(raised.value)


@pytest.mark.parametrize(
    ("operations", "images", "capability", "message"),
    [
        ([], 1, "mixed", "operations: the local editor needs at least one operation"),
        ([{"op": "composite", "image": 3, "center": [0.5, 0.5], "scale": 0.5}], 2, "mixed", "operations.0.image"),
        (
            [{"op": "label", "text": "a", "position": [0, 0]}, {"op": "rotate", "degrees": 10}],
            1,
            "geometric",
            "operations.1.op: 'rotate' is not allowed for geometric",
        ),
        ([{"op": "adjust", "contrast": 2}], 1, "math_formula", "operations.0.op"),
    ],
)
def test_operations_are_checked_against_images_and_type(
    operations: list[dict[str, Any]], images: int, capability: str, message: str
) -> None:
    instruction = parse_instruction({"operations": operations, "capability_type": capability})
    with pytest.raises(InvalidEdit, match=message.replace("(", r"\(")):
        asyncio.run(LocalEditor().edit([encode(solid(WHITE, SIZE))] * images, instruction))


def test_bad_input_images_are_named() -> None:
    instruction = parse_instruction({"operations": [{"op": "rotate", "degrees": 5}]})
    with pytest.raises(InvalidEdit, match=r"images\[1\]"):
        asyncio.run(LocalEditor().edit([encode(solid(WHITE, SIZE)), b"junk"], instruction))
    with pytest.raises(InvalidEdit, match="expected 1 to 3 images"):
        asyncio.run(LocalEditor().edit([encode(solid(WHITE, SIZE))] * 4, instruction))


def test_every_type_has_a_policy_and_a_prompt() -> None:
    assert set(POLICIES) == set(CapabilityType)
    for capability, policy in POLICIES.items():
        assert policy.local_operations <= ALL_LOCAL_OPERATIONS
        prompt = constrained_prompt("  Circle the largest object.  ", capability)
        assert prompt.startswith("Circle the largest object.\n")
        assert policy.preserve in prompt and capability.value.replace("_", " ") in prompt
    assert "composite" not in POLICIES[CapabilityType.geometric].local_operations


API_KEY = "sk-edit-test-4242"


def _editor(server: ImagesServer, attempts: int = 3) -> OpenAIImageEditor:
    retrying = Retrying(Backoff(max_attempts=attempts, base_delay=0.01, max_delay=0.02, max_elapsed=10.0))
    return OpenAIImageEditor(server.base_url, "edit-model", api_key=API_KEY, retrying=retrying)


def _prompted(outputs: int = 1, capability: CapabilityType = CapabilityType.geometric) -> EditInstruction:
    return EditInstruction(capability_type=capability, prompt="Label the hypotenuse c.", outputs=outputs)


def test_generative_edit_sends_the_constrained_prompt_and_returns_pngs(images_server: ImagesServer) -> None:
    source = encode(solid(WHITE, (320, 240)), "JPEG")
    result = asyncio.run(_editor(images_server).edit([source], _prompted(outputs=3)))

    assert result.provider == "openai"
    assert len(result.images) == 3
    decoded = [Image.open(io.BytesIO(data)) for data in result.images]
    assert all(data.startswith(PNG_SIGNATURE) for data in result.images)
    assert [image.size for image in decoded] == [(320, 240)] * 3
    assert [image.convert("RGB").getpixel((0, 0)) for image in decoded] == list(COLOURS[:3])
    (request,) = images_server.requests
    assert request.fields["model"] == "edit-model"
    assert request.fields["n"] == "3"
    assert request.fields["prompt"] == constrained_prompt("Label the hypotenuse c.", CapabilityType.geometric)
    assert "every shape, angle, length and proportion" in request.fields["prompt"]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert [(f.field, f.content_type, f.data) for f in request.files] == [("image", "image/jpeg", source)]
    assert result.operations == [
        {"op": "generative", "model": "edit-model", "prompt": request.fields["prompt"], "inputs": 1, "outputs": 3}
    ]


def test_two_reference_images_are_both_sent(images_server: ImagesServer) -> None:
    images = [encode(solid(WHITE, (64, 64))), encode(solid(RED, (32, 32)))]
    asyncio.run(_editor(images_server).edit(images, _prompted(capability=CapabilityType.natural_scene)))
    (request,) = images_server.requests
    assert [f.data for f in request.files] == images
    assert {f.field for f in request.files} == {"image[]"}


def test_server_error_then_success_is_retried(images_server: ImagesServer) -> None:
    images_server.fail_next(500)
    result = asyncio.run(_editor(images_server).edit([encode(solid(WHITE, (64, 64)))], _prompted()))
    assert len(result.images) == 1
    assert len(images_server.requests) == 2


def test_refused_edit_fails_at_once(images_server: ImagesServer) -> None:
    images_server.fail_next(400)
    with pytest.raises(PermanentToolError) as raised:
        asyncio.run(_editor(images_server).edit([encode(solid(WHITE, (64, 64)))], _prompted()))
    assert raised.value.status == 400
    assert API_KEY not in str(raised.value)
    assert len(images_server.requests) == 1


def test_persistent_overload_exhausts_the_retries(images_server: ImagesServer) -> None:
    images_server.fail_next(503, 429, 503)
    with pytest.raises(ToolUnavailable):
        asyncio.run(_editor(images_server).edit([encode(solid(WHITE, (64, 64)))], _prompted()))
    assert len(images_server.requests) == 3


def test_generative_edit_needs_words(images_server: ImagesServer) -> None:
    with pytest.raises(InvalidEdit, match="prompt"):
        asyncio.run(_editor(images_server).edit([encode(solid(WHITE, (64, 64)))], EditInstruction()))
    assert images_server.requests == []


def test_open_editor_builds_from_the_spec(images_server: ImagesServer) -> None:
    assert isinstance(open_editor(EditTool(), env={}), LocalEditor)
    ref = SecretKeyRef(name="images", key="apiKey")
    tool = EditTool.model_validate(
        {"provider": "openai", "baseUrl": images_server.base_url, "model": "edit-model", "apiKeySecret": ref}
    )
    editor = open_editor(tool, env={secret_env_name(ref): API_KEY})
    assert isinstance(editor, OpenAIImageEditor)
    assert API_KEY not in repr(editor)
    asyncio.run(editor.edit([encode(solid(WHITE, (64, 64)))], _prompted()))
    assert images_server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"
