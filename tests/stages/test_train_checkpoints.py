"""A resumed training takes the newest checkpoint whose listed files are all in the store and verify."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from dpe_testkit.runs import context, write_run

from dpe.spec import StageName
from dpe.stages.context import StageContext
from dpe.stages.train import COMPLETE_MARKER, _resume_checkpoint

FILES = {"model.safetensors": b"weights" * 100, "optimizer.pt": b"moments" * 100, "rng_state.pth": b"rng"}


def save(ctx: StageContext, step: int) -> str:
    """A checkpoint as the training callback leaves it: its files, then the marker listing them."""
    name = f"checkpoint-{step}"
    files = {file: ctx.store.put_bytes(ctx.key("checkpoints", name, file), data + bytes([step])) for file, data in FILES.items()}
    ctx.store.put_json(ctx.key("checkpoints", name, COMPLETE_MARKER), {"step": step, "files": files})
    return name


@pytest.fixture
def ctx(tmp_path: Path) -> StageContext:
    ctx = context(write_run(tmp_path), StageName.train, 1)
    for step in (4, 8, 12):
        save(ctx, step)
    return ctx


def skipped(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [event for r in caplog.records if (event := json.loads(r.getMessage())).get("event") == "checkpoint_skipped"]


def test_the_newest_complete_checkpoint_is_downloaded(ctx: StageContext, tmp_path: Path) -> None:
    found = _resume_checkpoint(ctx, tmp_path / "work")
    assert found is not None and found[0] == "checkpoint-12"
    assert {p.name: p.read_bytes() for p in found[1].iterdir()} == {file: data + bytes([12]) for file, data in FILES.items()}


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing", "marker without files", "marker truncated"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    ctx: StageContext, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    root = tmp_path / "store"
    optimizer = root / ctx.key("checkpoints", "checkpoint-12", "optimizer.pt")
    marker = ctx.key("checkpoints", "checkpoint-12", COMPLETE_MARKER)
    if damage == "truncated":
        optimizer.write_bytes(optimizer.read_bytes()[:10])
    elif damage == "flipped":
        optimizer.write_bytes(b"M" + optimizer.read_bytes()[1:])
    elif damage == "missing":
        ctx.store.delete(ctx.key("checkpoints", "checkpoint-12", "optimizer.pt"))
    elif damage == "marker without files":
        ctx.store.put_json(marker, {"step": 12})
    else:
        (root / marker).write_bytes((root / marker).read_bytes()[:5])
    caplog.set_level(logging.INFO, logger="dpe.stage.train")

    found = _resume_checkpoint(ctx, tmp_path / "work")

    assert found is not None and found[0] == "checkpoint-8"
    assert (found[1] / "optimizer.pt").read_bytes() == FILES["optimizer.pt"] + bytes([8])
    (event,) = skipped(caplog)
    assert event["checkpoint"] == "checkpoint-12"
    assert ("optimizer.pt" if damage in ("truncated", "flipped", "missing") else COMPLETE_MARKER) in event["reason"]


def test_without_a_usable_checkpoint_training_starts_over(ctx: StageContext, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for step in (4, 8, 12):
        ctx.store.delete(ctx.key("checkpoints", f"checkpoint-{step}", "rng_state.pth"))
    caplog.set_level(logging.INFO, logger="dpe.stage.train")
    assert _resume_checkpoint(ctx, tmp_path / "work") is None
    assert [event["checkpoint"] for event in skipped(caplog)] == ["checkpoint-12", "checkpoint-8", "checkpoint-4"]
