"""Tiny VLMs build offline, reload as ordinary HF directories and answer through the interface."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from dpe.models.inference import VISION_TOKENS, Prompt, TransformersAnswerer, open_image
from dpe.models.tiny import ARCHITECTURES, build_tiny_model
from dpe.spec import Sampling


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(request.param, tmp_path_factory.mktemp(request.param), corpus=["What colour is the square?"])


def test_directory_is_a_standard_hf_vlm(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "chat_template.jinja"} <= names
    processor_config = json.loads((tiny / "processor_config.json").read_text())
    assert processor_config["processor_class"] in {"Qwen2_5_VLProcessor", "Qwen3VLProcessor"}
    config = json.loads((tiny / "config.json").read_text())
    assert config["image_token_id"] < config["text_config"]["vocab_size"]


def test_sampling_gives_n_answers_per_prompt_and_never_vision_tokens(tiny: Path) -> None:
    answerer = TransformersAnswerer(tiny, min_image_side=56, batch_size=3)
    prompts = [Prompt(png((30 + i, 20), (255, 0, 0)), f"Question {i}?") for i in range(5)]
    answers = answerer.answer(prompts, 4, Sampling(temperature=1.0, top_p=1.0, top_k=40, max_tokens=12), seed=1)
    assert [len(a) for a in answers] == [4] * 5
    assert answers == answerer.answer(prompts, 4, Sampling(temperature=1.0, top_p=1.0, top_k=40, max_tokens=12), seed=1)
    tokenizer = answerer.processor.tokenizer
    raw = tokenizer.batch_decode(
        answerer.model.generate(
            **answerer.processor(
                text=[answerer._chat("x")], images=[open_image(prompts[0].image, 56)], return_tensors="pt"
            ),
            max_new_tokens=24,
            do_sample=True,
            suppress_tokens=answerer.suppressed,
        )[:, -24:]
    )
    assert not any(token in raw[0] for token in VISION_TOKENS[1:])


def test_greedy_repeats_the_single_answer(tiny: Path) -> None:
    answerer = TransformersAnswerer(tiny, min_image_side=56)
    (answers,) = answerer.answer([Prompt(png((56, 56), (0, 0, 255)), "Colour?")], 3, Sampling(temperature=0.0, max_tokens=6))
    assert len(answers) == 3 and len(set(answers)) == 1


def test_minimum_image_side_rule() -> None:
    assert open_image(png((100, 20), (1, 2, 3)), 224).size == (1120, 224)
    assert open_image(png((300, 400), (1, 2, 3)), 224).size == (300, 400)
    assert open_image(png((8, 8), (1, 2, 3)), 0).size == (8, 8)


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'llava'"):
        build_tiny_model("llava", tmp_path)
