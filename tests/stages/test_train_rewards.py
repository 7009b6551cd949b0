"""The GRPO rewards read the answer only where the prompt says it goes, in the form it asks for; and
the training images are scaled into the pixel bounds before any processor sees them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from dpe.models.processor import bound_pixels, pixel_bounds
from dpe.stages.train import accuracy_reward, boxed_answer, format_reward
from dpe.taxonomy import QuestionFormat

MC = QuestionFormat.multiple_choice.value
NUM = QuestionFormat.numerical.value
TEXT = QuestionFormat.free_text.value
OPTIONS = ["red", "blue", "green", "yellow"]


def reward(completion: str, gold: str = "B", fmt: str = MC, options: list[str] | None = None) -> float:
    """The accuracy reward of one completion, passed as TRL passes a conversational completion."""
    opts = OPTIONS if options is None and fmt == MC else (options or [])
    (value,) = accuracy_reward([[{"role": "assistant", "content": completion}]], answer=[gold], question_format=[fmt], options=[opts])
    return value


@pytest.mark.parametrize(
    "completion",
    [
        "<think>The square is blue, option B.</think> \\boxed{B}",
        "<think>blue</think>\\boxed{(B)}",
        "<think>blue</think>\n\\boxed{\\text{B}}",
        "\\boxed{B}",  # no think tags: the box is still where the answer goes (the format reward says the rest)
        "<think>first \\boxed{A}, no: blue</think> \\boxed{B}",  # drafts in the reasoning are not the answer
        "<think>blue</think> \\boxed{B} because it is blue",  # text after the box costs format, not accuracy
    ],
)
def test_the_letter_in_the_box_after_the_reasoning_earns_accuracy(completion: str) -> None:
    assert reward(completion) == 1.0


@pytest.mark.parametrize(
    "completion",
    [
        "B",  # a bare letter
        "The answer is B",  # an answer line
        "<think>blue</think> The answer is B.",
        "<think>blue</think> Answer: (B)",
        "<think>blue</think> \\boxed{blue}",  # the option's text where the letter was asked for
        "<think>blue</think> \\boxed{Blue.}",
        "<think>It is \\boxed{B}</think> so the answer is B",  # a box only inside the reasoning
        "<think>It is blue, \\boxed{B}",  # reasoning never closed: no answer given
        "<think>blue</think> \\boxed{}",  # an empty box
        "<think>blue</think> \\boxed{A}",  # a wrong letter
        "<think>blue</think> \\boxed{B or C}",  # hedging across options
    ],
)
def test_answers_elsewhere_or_in_another_form_earn_nothing(completion: str) -> None:
    assert reward(completion) == 0.0


@pytest.mark.parametrize(
    "completion, gold, fmt, expected",
    [
        ("<think>3 + 4.5</think> \\boxed{7.5}", "7.5", NUM, 1.0),
        ("<think>3 + 4.5</think> \\boxed{7.5 cm}", "7.5", NUM, 1.0),
        ("<think>3 + 4.5</think> The answer is 7.5", "7.5", NUM, 0.0),
        ("7.5", "7.5", NUM, 0.0),
        ("<think>sky</think> \\boxed{north}", "north", TEXT, 1.0),
        ("<think>sky</think> north", "north", TEXT, 0.0),
        ("<think>look</think> \\boxed{Yes}", "yes", TEXT, 1.0),
    ],
)
def test_numbers_and_short_answers_are_read_from_the_box_only(completion: str, gold: str, fmt: str, expected: float) -> None:
    assert reward(completion, gold, fmt) == expected


def test_a_gold_given_as_option_text_is_still_matched_by_its_letter() -> None:
    assert reward("<think>blue</think> \\boxed{B}", gold="blue") == 1.0


def test_plain_string_completions_are_read_too() -> None:
    rewards = accuracy_reward(["<think>x</think> \\boxed{B}", "B"], answer=["B", "B"], question_format=[MC, MC], options=[OPTIONS, OPTIONS])
    assert rewards == [1.0, 0.0]


def test_boxed_answer_reads_after_the_last_closing_tag() -> None:
    assert boxed_answer("<think>a</think> \\boxed{1} <think>b</think> \\boxed{2}") == "2"
    assert boxed_answer("<think>a</think> nothing boxed") is None
    assert boxed_answer("no tags \\boxed{4} then \\boxed{5}") == "5"


def test_the_format_reward_is_unchanged() -> None:
    completions = [[{"content": "<think>blue</think> \\boxed{B}"}], [{"content": "\\boxed{B}"}]]
    assert format_reward(completions) == [1.0, 0.0]


@pytest.mark.parametrize(
    "size, expected_area",
    [
        ((56, 56), "up"),  # the built-in world's small images: scaled up to 512^2 or a little over
        ((300, 100), "up"),
        ((4000, 3000), "down"),  # 12 MP: scaled down to at most 2048^2
        ((1000, 800), "same"),
        ((512, 512), "same"),
        ((2048, 2048), "same"),
    ],
)
def test_images_are_scaled_into_the_pixel_bounds_keeping_their_aspect_ratio(size: tuple[int, int], expected_area: str) -> None:
    low, high = 512 * 512, 2048 * 2048
    image = Image.new("RGB", size, (10, 20, 30))
    bounded = bound_pixels(image, low, high)
    area = bounded.width * bounded.height
    assert low <= area <= high
    if expected_area == "same":
        assert bounded is image
    else:
        assert abs(bounded.width / bounded.height - size[0] / size[1]) < 0.02
        assert area < low * 1.01 if expected_area == "up" else area > high * 0.99


def test_bounds_in_the_wrong_order_are_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        bound_pixels(Image.new("RGB", (10, 10)), 100, 50)


def qwen_processor(low: int, high: int) -> SimpleNamespace:
    from transformers import Qwen2VLImageProcessorPil

    return SimpleNamespace(image_processor=Qwen2VLImageProcessorPil(size={"shortest_edge": low, "longest_edge": high}))


def test_the_papers_bounds_stand_for_a_real_qwen_processor() -> None:
    """Qwen2.5-VL's processor keeps 56^2 to 12.8 M pixels: the paper's 512^2 to 2048^2 lie inside."""
    assert pixel_bounds(qwen_processor(56 * 56, 28 * 28 * 16384), 512 * 512, 2048 * 2048) == (512 * 512, 2048 * 2048)


def test_bounds_are_capped_at_what_a_small_processor_keeps() -> None:
    """The tiny models' processors shrink every image to 56^2: a 512^2 copy would be work thrown away."""
    assert pixel_bounds(qwen_processor(56 * 56, 56 * 56), 512 * 512, 2048 * 2048) == (56 * 56, 56 * 56)
    assert pixel_bounds(qwen_processor(56 * 56, 1024 * 1024), 512 * 512, 2048 * 2048) == (512 * 512, 1024 * 1024)


def test_other_processors_leave_the_bounds_alone() -> None:
    other = SimpleNamespace(image_processor=SimpleNamespace(size={"longest_edge": 384}))
    assert pixel_bounds(other, 512 * 512, 2048 * 2048) == (512 * 512, 2048 * 2048)
