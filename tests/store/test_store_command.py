"""`dpe store push|pull|ls` against the real S3 server and a local store."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from dpe_testkit.s3server import S3Server

from dpe.cli import main


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _model(root: Path) -> Path:
    (root / "nested").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "tiny"}')
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (root / "nested" / "tokenizer.json").write_text("{}")
    (root / ".cache").mkdir()
    (root / ".cache" / "lock").write_text("hidden")
    return root


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("DPE_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("DPE_S3_SECRET_KEY", s3_server.secret_key)
    return ["--endpoint", f"http://{s3_server.endpoint}"]


@pytest.mark.s3
def test_push_ls_pull_a_model_folder(s3_server: S3Server, s3_env: list[str], tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    source = _model(tmp_path / "tiny")
    uri = f"s3://{bucket}/models/tiny"
    runner = CliRunner()

    pushed = runner.invoke(main, ["store", "push", str(source), uri, *s3_env])
    assert pushed.exit_code == 0, pushed.output
    assert json.loads(pushed.output.splitlines()[-1])["uploaded"] == 3

    listed = runner.invoke(main, ["store", "ls", uri, *s3_env])
    assert listed.output.split() == [f"{uri}/config.json", f"{uri}/model.safetensors", f"{uri}/nested/tokenizer.json"]

    again = runner.invoke(main, ["store", "push", str(source), uri, *s3_env])
    assert json.loads(again.output.splitlines()[-1]) == {"uri": uri, "uploaded": 0, "skipped": 3, "bytes": 0}

    pulled = runner.invoke(main, ["store", "pull", uri, str(tmp_path / "copy"), *s3_env])
    assert pulled.exit_code == 0, pulled.output
    assert _tree(tmp_path / "copy") == {k: v for k, v in _tree(source).items() if not k.startswith(".")}


@pytest.mark.s3
def test_objects_any_s3_client_uploaded_are_pulled_and_checked(s3_server: S3Server, s3_env: list[str], tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(bucket, "datasets/probe.parquet", io.BytesIO(b"PAR1 rows"), 9)

    pulled = CliRunner().invoke(main, ["store", "pull", f"s3://{bucket}/datasets/probe.parquet", str(tmp_path / "probe.parquet"), *s3_env])

    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "probe.parquet").read_bytes() == b"PAR1 rows"


def test_push_into_a_local_store_named_by_a_run(tmp_path: Path) -> None:
    store = tmp_path / "runs"
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"apiVersion": "dpe.dev/v1alpha1", "kind": "EvolutionRun", "metadata": {"name": "r"},
                                   "spec": {"baseModel": "builtin:tiny-qwen2.5-vl", "storage": {"local": {"path": str(store)}}}}))
    source = _model(tmp_path / "tiny")

    pushed = CliRunner().invoke(main, ["store", "push", str(source), (store / "models" / "tiny").as_uri(), "--run", str(run)])

    assert pushed.exit_code == 0, pushed.output
    assert _tree(store / "models" / "tiny") == {k: v for k, v in _tree(source).items() if not k.startswith(".")}


@pytest.mark.parametrize("arguments, message", [
    (["ls", "s3://bucket/x"], "exactly one of --run FILE or --endpoint URL"),
    (["ls", "file:///srv/x", "--endpoint", "http://127.0.0.1:1"], "give an s3://bucket/key URI"),
])
def test_the_location_must_be_given_once(arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["store", *arguments])
    assert result.exit_code == 2 and message in result.output


def test_missing_credentials_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DPE_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("DPE_S3_SECRET_KEY", raising=False)
    result = CliRunner().invoke(main, ["store", "ls", "s3://models/x", "--endpoint", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "DPE_S3_ACCESS_KEY" in result.output
