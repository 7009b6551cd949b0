"""Results name what a stage wrote by store key, so a copied store reads its own models, never the original's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dpe_testkit.runs import context, write_run

from dpe.models.inference import TransformersAnswerer
from dpe.records import records_to_parquet
from dpe.spec import StageName
from dpe.stages import evaluate, train
from dpe.stages.context import open_context

MODEL_KEY = "runs/default/stage-test/iterations/1/train/model"
SMALL_EVALUATION = {"benchmarks": [{"name": "world", "uri": "builtin:world", "limit": 12}], "sampling": {"temperature": 0.0, "maxTokens": 8}}


def test_a_local_stage_names_its_outputs_by_store_key(tmp_path: Path) -> None:
    ctx = context(write_run(tmp_path), StageName.score, 1)
    assert ctx.uri(ctx.key("train.parquet")) == "store:runs/default/stage-test/iterations/1/score/train.parquet"


@pytest.mark.slow
def test_a_copied_store_evaluates_its_own_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPE_CACHE_DIR", str(tmp_path / "cache"))
    original = write_run(tmp_path / "original", evaluate=SMALL_EVALUATION)
    training = context(original, StageName.train, 1)
    training.store.put_bytes(training.stage_key(StageName.score, "train.parquet"), records_to_parquet([]))
    trained = train.run(training)
    assert trained["model_uri"] == f"store:{MODEL_KEY}"
    assert str(tmp_path) not in json.dumps(trained)

    shutil.copytree(tmp_path / "original" / "store", tmp_path / "copy" / "store")
    shutil.rmtree(tmp_path / "original" / "store")
    copy = write_run(tmp_path / "copy", evaluate=SMALL_EVALUATION)
    ctx = open_context(copy, 1, StageName.evaluate, trained["model_uri"])
    model_dir = ctx.model_dir(ctx.model_uri)
    assert model_dir == tmp_path / "copy" / "store" / MODEL_KEY

    result = evaluate.run(ctx, lambda: TransformersAnswerer(model_dir, min_image_side=56))
    assert result["model"] == f"store:{MODEL_KEY}" and result["benchmarks"]["world"]["items"] == 12
    assert str(tmp_path) not in json.dumps(result)
