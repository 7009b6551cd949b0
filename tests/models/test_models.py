"""Tiny VLMs build offline, reload as ordinary HF directories and answer through the interface."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dpe import layout
from dpe.models.inference import VISION_TOKENS, Prompt, TransformersAnswerer, open_image
from dpe.models.loading import resolve_model
from dpe.models.tiny import ARCHITECTURES, build_tiny_model
from dpe.spec import S3Storage, Sampling, Storage
from dpe.store import open_store

pytestmark = pytest.mark.slow


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


@pytest.mark.s3
def test_a_built_in_model_is_built_once_per_run_and_shared_through_the_store(tmp_path: Path, s3_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Two stage pods (each its own cache) of one run: the first builds and publishes, the second reads it."""
    storage = Storage(s3=S3Storage(endpoint=f"http://{s3_server.endpoint}", bucket=s3_server.new_bucket(), secure=False))
    store = open_store(storage, env={"DPE_S3_ACCESS_KEY": s3_server.access_key, "DPE_S3_SECRET_KEY": s3_server.secret_key})
    caplog.set_level(logging.INFO, logger="dpe.models")

    first = resolve_model("builtin:tiny-qwen2.5-vl", storage, store, tmp_path / "pod-a", run=("default", "r"))
    second = resolve_model("builtin:tiny-qwen2.5-vl", storage, store, tmp_path / "pod-b", run=("default", "r"))

    events = [json.loads(r.getMessage())["event"] for r in caplog.records if r.name == "dpe.models"]
    assert events == ["builtin_model_built", "builtin_model_shared"]
    assert store.exists(layout.shared_model_marker("default", "r", "tiny-qwen2.5-vl"))
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
