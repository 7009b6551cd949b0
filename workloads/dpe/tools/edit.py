"""Image editing for the agents: recorded local operations or an OpenAI-compatible image model.

`ImageEditor.edit(images, instruction)` returns PNG outputs and the operations as applied.

`LocalEditor` runs typed, deterministic operations (crop, zoom, rotate, adjust, circle, box,
arrow, label, composite). Positions are fractions of the current image's width and height, so an
instruction does not depend on resolution; line widths and font sizes are pixels. Each applied
operation is echoed with its parameters plus the pixel geometry it resolved to, so a validator can
check an answer ("what is circled?") against what was really drawn. Operations are validated at
the border: an unknown `op` or an out-of-range value fails with the path of the offending field.

`OpenAIImageEditor` calls `images.edit` on an OpenAI-compatible endpoint with the instruction
wrapped in its capability type's constraints (see dpe.tools.constraints) and asks for n outputs,
decoded from base64 and re-encoded as PNG. 429, 5xx and timeouts are retried; other 4xx are not.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import openai
from PIL import Image, ImageColor, ImageDraw, ImageEnhance, ImageFont
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from dpe.image_quality import decode
from dpe.records import png_bytes
from dpe.retry import Backoff, is_transient_status
from dpe.secrets import redact, resolve_secret
from dpe.spec import EditTool
from dpe.taxonomy import CapabilityType
from dpe.tools.constraints import POLICIES, constrained_prompt
from dpe.tools.retry import PermanentToolError, Retrying, ToolError, Transient

MAX_INPUT_IMAGES = 3
"""Input images one edit may use."""
MAX_OUTPUTS = 6
"""Outputs one generative edit may ask for."""
MAX_OPERATIONS = 32
MAX_PROMPT_CHARS = 4000
MAX_LABEL_CHARS = 200
MAX_ZOOM = 16.0
MAX_FACTOR = 4.0
"""Upper bound of brightness, contrast, saturation and sharpness factors (1.0 leaves them as they are)."""
EDIT_TIMEOUT = 300.0
"""Seconds one generative edit may take; image models are slow."""
EDIT_RETRY = Backoff(max_attempts=3, base_delay=2.0, max_delay=16.0, max_elapsed=600.0)
ARROW_HEAD_ANGLE = math.radians(25)
ARROW_HEAD_MIN = 10
"""Pixels: the shortest arrow head, so thin arrows still point visibly."""
LABEL_PADDING = 0.25
"""Padding around a label's background, as a fraction of its font size."""
ERROR_TEXT_LIMIT = 300


class InvalidEdit(ValueError):
    """The instruction or the images cannot be edited as asked; the message names the field."""


def _colour(value: Any) -> Any:
    """Accept colour names and #hex strings as well as RGB triples."""
    if isinstance(value, str):
        try:
            return ImageColor.getrgb(value)[:3]
        except ValueError:
            raise ValueError(f"unknown colour {value!r}; use a name, #rrggbb or [r, g, b]") from None
    return value


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Point = tuple[Fraction, Fraction]
"""(x, y) as fractions of the image's width and height, from the top-left corner."""
Box = tuple[Fraction, Fraction, Fraction, Fraction]
"""(left, top, right, bottom) as fractions of the image's width and height."""
Channel = Annotated[int, Field(ge=0, le=255)]
Colour = Annotated[tuple[Channel, Channel, Channel], BeforeValidator(_colour)]
LineWidth = Annotated[int, Field(ge=1, le=64)]
Factor = Annotated[float, Field(ge=0.0, le=MAX_FACTOR)]

RED = (255, 0, 0)
BLACK = (0, 0, 0)
WHITE = (255, 255, 255)


def _check_box(box: Box) -> Box:
    left, top, right, bottom = box
    if not (left < right and top < bottom):
        raise ValueError(f"box needs left < right and top < bottom, got {list(box)}")
    return box


OrderedBox = Annotated[Box, AfterValidator(_check_box)]


class Operation(BaseModel):
    """One local edit step; subclasses narrow `op` to their own name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str


class Crop(Operation):
    """Keep the region `box`."""

    op: Literal["crop"]
    box: OrderedBox


class Zoom(Operation):
    """Enlarge the region around `center` by `factor`, keeping the image's size and aspect."""

    op: Literal["zoom"]
    center: Point
    factor: Annotated[float, Field(ge=1.0, le=MAX_ZOOM)]


class Rotate(Operation):
    """Rotate counter-clockwise by `degrees`; `expand` grows the canvas to keep the corners."""

    op: Literal["rotate"]
    degrees: Annotated[float, Field(ge=-360.0, le=360.0)]
    expand: bool = True
    fill: Colour = WHITE


class Adjust(Operation):
    """Scale brightness, contrast, saturation and sharpness (1.0 keeps each), in that order."""

    op: Literal["adjust"]
    brightness: Factor = 1.0
    contrast: Factor = 1.0
    saturation: Factor = 1.0
    sharpness: Factor = 1.0


class Circle(Operation):
    """Outline a circle; `radius` is a fraction of the image's shorter side."""

    op: Literal["circle"]
    center: Point
    radius: Annotated[float, Field(gt=0.0, le=1.0)]
    colour: Colour = RED
    width: LineWidth = 4


class BoxMarker(Operation):
    """Outline the rectangle `box`."""

    op: Literal["box"]
    box: OrderedBox
    colour: Colour = RED
    width: LineWidth = 4


class Arrow(Operation):
    """Draw an arrow from `start` to `end`, its head at `end`."""

    op: Literal["arrow"]
    start: Point
    end: Point
    colour: Colour = RED
    width: LineWidth = 4

    @model_validator(mode="after")
    def _has_length(self) -> Arrow:
        if self.start == self.end:
            raise ValueError("arrow start and end must differ")
        return self


class Label(Operation):
    """Write `text` with its top-left corner at `position`, on an optional background."""

    op: Literal["label"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]
    position: Point
    size: Annotated[int, Field(ge=6, le=512)] = 24
    colour: Colour = BLACK
    background: Colour | None = WHITE


class Composite(Operation):
    """Paste input image `image` (1-based; 1 is the base) centred at `center` over the base.

    `scale` is the pasted image's width as a fraction of the base's width (aspect kept); `alpha`
    multiplies its opacity.
    """

    op: Literal["composite"]
    image: Annotated[int, Field(ge=2, le=MAX_INPUT_IMAGES)] = 2
    center: Point
    scale: Annotated[float, Field(gt=0.0, le=1.0)]
    alpha: Fraction = 1.0


AnyOperation = Annotated[
    Crop | Zoom | Rotate | Adjust | Circle | BoxMarker | Arrow | Label | Composite,
    Field(discriminator="op"),
]


class EditInstruction(BaseModel):
    """What to change: typed operations for the local editor, a prompt for a generative one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capability_type: CapabilityType = CapabilityType.mixed
    """The image's type; it decides which changes are allowed."""
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    """The instruction in words, for generative editors."""
    operations: Annotated[list[AnyOperation], Field(max_length=MAX_OPERATIONS)] = []
    """Steps for the local editor, applied in order to image 1."""
    outputs: Annotated[int, Field(ge=1, le=MAX_OUTPUTS)] = 1
    """Images a generative editor should return; the local editor always returns one."""


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'instruction'}: {problem['msg']}"
        for problem in error.errors(include_url=False)
    )


def parse_instruction(data: Mapping[str, Any]) -> EditInstruction:
    """Validate an instruction from JSON (an agent's output); InvalidEdit names every bad field."""
    try:
        return EditInstruction.model_validate(data)
    except ValidationError as error:
        raise InvalidEdit(f"invalid edit instruction: {_describe(error)}") from None


@dataclass(frozen=True)
class EditResult:
    """The edited images (PNG) and the operations as applied, for provenance and validation."""

    images: list[bytes]
    operations: list[dict[str, Any]]
    provider: str


class ImageEditor(ABC):
    """Edits images according to an instruction."""

    provider: ClassVar[str]

    @abstractmethod
    async def edit(self, images: list[bytes], instruction: EditInstruction) -> EditResult:
        """Apply `instruction` to `images` (image 1 is the base)."""


def _decode_inputs(images: list[bytes]) -> list[Image.Image]:
    if not 1 <= len(images) <= MAX_INPUT_IMAGES:
        raise InvalidEdit(f"images: expected 1 to {MAX_INPUT_IMAGES} images, got {len(images)}")
    decoded = []
    for number, data in enumerate(images):
        try:
            decoded.append(decode(data))
        except ValueError as error:
            raise InvalidEdit(f"images[{number}]: {error}") from None
    return decoded


def _pixel(point: Point, size: tuple[int, int]) -> tuple[int, int]:
    return round(point[0] * size[0]), round(point[1] * size[1])


def _pixel_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top = _pixel((box[0], box[1]), size)
    right, bottom = _pixel((box[2], box[3]), size)
    return left, top, max(right, left + 1), max(bottom, top + 1)


Applied = tuple[Image.Image, dict[str, Any]]


def _crop(canvas: Image.Image, op: Crop, inputs: list[Image.Image]) -> Applied:
    box = _pixel_box(op.box, canvas.size)
    return canvas.crop(box), {"pixels": list(box)}


def _zoom(canvas: Image.Image, op: Zoom, inputs: list[Image.Image]) -> Applied:
    width, height = canvas.size
    window_w, window_h = max(round(width / op.factor), 1), max(round(height / op.factor), 1)
    cx, cy = _pixel(op.center, canvas.size)
    left = min(max(cx - window_w // 2, 0), width - window_w)
    top = min(max(cy - window_h // 2, 0), height - window_h)
    box = (left, top, left + window_w, top + window_h)
    return canvas.crop(box).resize(canvas.size, Image.Resampling.LANCZOS), {"pixels": list(box)}


def _rotate(canvas: Image.Image, op: Rotate, inputs: list[Image.Image]) -> Applied:
    rotated = canvas.rotate(op.degrees, resample=Image.Resampling.BICUBIC, expand=op.expand, fillcolor=op.fill)
    return rotated, {}


def _adjust(canvas: Image.Image, op: Adjust, inputs: list[Image.Image]) -> Applied:
    for enhancer, factor in (
        (ImageEnhance.Brightness, op.brightness),
        (ImageEnhance.Contrast, op.contrast),
        (ImageEnhance.Color, op.saturation),
        (ImageEnhance.Sharpness, op.sharpness),
    ):
        if factor != 1.0:
            canvas = enhancer(canvas).enhance(factor)
    return canvas, {}


def _circle(canvas: Image.Image, op: Circle, inputs: list[Image.Image]) -> Applied:
    cx, cy = _pixel(op.center, canvas.size)
    radius = max(round(op.radius * min(canvas.size)), 1)
    ImageDraw.Draw(canvas).ellipse(
        (cx - radius, cy - radius, cx + radius, cy + radius), outline=op.colour, width=op.width
    )
    return canvas, {"pixels": {"center": [cx, cy], "radius": radius}}


def _box(canvas: Image.Image, op: BoxMarker, inputs: list[Image.Image]) -> Applied:
    box = _pixel_box(op.box, canvas.size)
    ImageDraw.Draw(canvas).rectangle(box, outline=op.colour, width=op.width)
    return canvas, {"pixels": list(box)}


def _arrow(canvas: Image.Image, op: Arrow, inputs: list[Image.Image]) -> Applied:
    start, end = _pixel(op.start, canvas.size), _pixel(op.end, canvas.size)
    draw = ImageDraw.Draw(canvas)
    draw.line((start, end), fill=op.colour, width=op.width)
    heading = math.atan2(end[1] - start[1], end[0] - start[0])
    length = max(4 * op.width, ARROW_HEAD_MIN)
    wings = [
        (end[0] - length * math.cos(heading + side), end[1] - length * math.sin(heading + side))
        for side in (ARROW_HEAD_ANGLE, -ARROW_HEAD_ANGLE)
    ]
    draw.polygon([end, *wings], fill=op.colour)
    return canvas, {"pixels": {"start": list(start), "end": list(end)}}


def _label(canvas: Image.Image, op: Label, inputs: list[Image.Image]) -> Applied:
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=op.size)
    anchor = _pixel(op.position, canvas.size)
    bounds = draw.textbbox(anchor, op.text, font=font)
    if op.background is not None:
        pad = round(op.size * LABEL_PADDING)
        draw.rectangle((bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad), fill=op.background)
    draw.text(anchor, op.text, fill=op.colour, font=font)
    return canvas, {"pixels": [round(v) for v in bounds]}


def _composite(canvas: Image.Image, op: Composite, inputs: list[Image.Image]) -> Applied:
    overlay = inputs[op.image - 1].convert("RGBA")
    width = max(round(op.scale * canvas.width), 1)
    height = max(round(width * overlay.height / overlay.width), 1)
    overlay = overlay.resize((width, height), Image.Resampling.LANCZOS)
    if op.alpha < 1.0:
        overlay.putalpha(overlay.getchannel("A").point(lambda value: round(value * op.alpha)))
    cx, cy = _pixel(op.center, canvas.size)
    left, top = cx - width // 2, cy - height // 2
    canvas.paste(overlay, (left, top), overlay)
    return canvas, {"pixels": [left, top, left + width, top + height]}


APPLY: dict[type[Operation], Callable[[Image.Image, Any, list[Image.Image]], Applied]] = {
    Crop: _crop,
    Zoom: _zoom,
    Rotate: _rotate,
    Adjust: _adjust,
    Circle: _circle,
    BoxMarker: _box,
    Arrow: _arrow,
    Label: _label,
    Composite: _composite,
}


def _check_operations(instruction: EditInstruction, inputs: int) -> None:
    if not instruction.operations:
        raise InvalidEdit("operations: the local editor needs at least one operation")
    allowed = POLICIES[instruction.capability_type].local_operations
    for number, op in enumerate(instruction.operations):
        name = op.op
        if name not in allowed:
            raise InvalidEdit(
                f"operations.{number}.op: '{name}' is not allowed for {instruction.capability_type.value} "
                f"images (allowed: {', '.join(sorted(allowed))})"
            )
        if isinstance(op, Composite) and op.image > inputs:
            raise InvalidEdit(f"operations.{number}.image: image {op.image} was not given ({inputs} image(s))")


def apply_operations(images: list[bytes], instruction: EditInstruction) -> EditResult:
    """The local edit, synchronously: validate, apply each operation to image 1, echo them."""
    inputs = _decode_inputs(images)
    _check_operations(instruction, len(inputs))
    canvas = inputs[0].convert("RGB")
    applied = []
    for op in instruction.operations:
        canvas, resolved = APPLY[type(op)](canvas, op, inputs)
        applied.append({**op.model_dump(mode="json"), **resolved, "image_size": [canvas.width, canvas.height]})
    return EditResult([png_bytes(canvas)], applied, LocalEditor.provider)


class LocalEditor(ImageEditor):
    """Deterministic, recorded operations: the same input and instruction give the same bytes."""

    provider = "local"

    async def edit(self, images: list[bytes], instruction: EditInstruction) -> EditResult:
        return await asyncio.to_thread(apply_operations, images, instruction)


def _upload(number: int, data: bytes, image: Image.Image) -> tuple[str, bytes, str]:
    mime = Image.MIME.get(image.format or "", "")
    if mime in ("image/png", "image/jpeg", "image/webp"):
        return f"image-{number}.{mime.split('/')[1]}", data, mime
    return f"image-{number}.png", png_bytes(image), "image/png"


class OpenAIImageEditor(ImageEditor):
    """An OpenAI-compatible `images.edit` endpoint, the prompt constrained per capability type."""

    provider = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = EDIT_TIMEOUT,
        retrying: Retrying | None = None,
        size: str | None = None,
        response_format: Literal["b64_json"] | None = None,
    ):
        """`response_format` is sent only when set: GPT image models always answer in base64 and
        refuse the parameter, while older endpoints need it to avoid answering with URLs."""
        self.base_url = base_url
        self.model = model
        self._api_key = api_key
        self.timeout = timeout
        self._retrying = retrying or Retrying(EDIT_RETRY)
        self.size = size
        self.response_format = response_format

    def __repr__(self) -> str:
        return f"OpenAIImageEditor({self.base_url!r}, {self.model!r})"

    def _scrub(self, text: str) -> str:
        return redact(text, [self._api_key])[:ERROR_TEXT_LIMIT]

    async def edit(self, images: list[bytes], instruction: EditInstruction) -> EditResult:
        if not instruction.prompt.strip():
            raise InvalidEdit("prompt: a generative edit needs an instruction in words")
        inputs = _decode_inputs(images)
        uploads = [_upload(n + 1, data, image) for n, (data, image) in enumerate(zip(images, inputs, strict=True))]
        prompt = constrained_prompt(instruction.prompt, instruction.capability_type)
        client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=self._api_key or "unused", max_retries=0, timeout=self.timeout
        )
        try:
            response = await self._retrying.call(
                lambda: self._request(client, uploads, prompt, instruction.outputs),
                subject=f"image edit with {self.model} at {self.base_url}",
            )
        finally:
            await client.close()
        outputs = [self._output(number, item) for number, item in enumerate(response.data or [])]
        if not outputs:
            raise ToolError(f"image edit at {self.base_url} returned no images")
        operation = {
            "op": "generative",
            "model": self.model,
            "prompt": prompt,
            "inputs": len(images),
            "outputs": instruction.outputs,
        }
        return EditResult(outputs, [operation], self.provider)

    async def _request(
        self, client: openai.AsyncOpenAI, uploads: list[tuple[str, bytes, str]], prompt: str, outputs: int
    ) -> Any:
        options: dict[str, Any] = {}
        if self.size is not None:
            options["size"] = self.size
        if self.response_format is not None:
            options["response_format"] = self.response_format
        try:
            return await client.images.edit(
                model=self.model,
                image=uploads[0] if len(uploads) == 1 else uploads,
                prompt=prompt,
                n=outputs,
                **options,
            )
        except openai.APITimeoutError:
            raise Transient("timeout") from None
        except openai.APIConnectionError as error:
            raise Transient(f"connection failed ({type(error.__cause__ or error).__name__})") from None
        except openai.APIStatusError as error:
            if is_transient_status(error.status_code):
                raise Transient.of_status(error.status_code, error.response.headers) from None
            raise PermanentToolError(
                f"image edit at {self.base_url} refused the request: status {error.status_code}: "
                f"{self._scrub(error.message)}",
                status=error.status_code,
            ) from None

    def _output(self, number: int, item: Any) -> bytes:
        encoded = getattr(item, "b64_json", None)
        if not encoded:
            raise ToolError(
                f"image edit at {self.base_url} returned output {number} without b64_json "
                "(set response_format='b64_json' for endpoints that answer with URLs)"
            )
        try:
            return png_bytes(decode(base64.b64decode(encoded, validate=True)).convert("RGB"))
        except (binascii.Error, ValueError) as error:
            raise ToolError(f"image edit output {number} is not a readable image: {error}") from None


def open_editor(tool: EditTool, *, env: Mapping[str, str] = os.environ) -> ImageEditor:
    """The editor `tool` describes; the API key is read from its secret reference in `env`."""
    if tool.provider == "local":
        return LocalEditor()
    assert tool.base_url is not None and tool.model is not None
    api_key = None if tool.api_key_secret is None else resolve_secret(tool.api_key_secret, env)
    return OpenAIImageEditor(tool.base_url, tool.model, api_key=api_key)
