"""EvolutionRun validation: every malformed document is refused with a message naming the field."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from dpe_testkit.malformed import AGENT, MALFORMED, MINIMAL, Malformed, with_value

from dpe.manifest import MAX_PROBLEMS, SpecError, load_run, parse_run, parse_yaml
from dpe.spec import EvolutionRun, Execution, Resources, StageName
from dpe.spec.execution import quantity_value
from dpe.spec.limits import MAX_INDEXED_COMPLETIONS
from dpe.spec.text import check_plain, looks_like_credential, redact_credentials, shown

ROOT = Path(__file__).resolve().parents[2]
@pytest.mark.parametrize("case", MALFORMED, ids=[c.name for c in MALFORMED])
def test_malformed_document_is_refused_naming_the_field(case: Malformed) -> None:
    with pytest.raises(SpecError) as caught:
        parse_run(case.document)
    problems = caught.value.problems
    assert any(p.startswith(f"{case.field}:") for p in problems), problems
    if case.words:
        assert any(case.words in p for p in problems), problems


def test_at_least_thirty_malformed_cases() -> None:
    assert len(MALFORMED) >= 30


@pytest.mark.parametrize(
    "text, words",
    [
        ("spec: [unclosed", "not valid YAML at line 1"),
        ("a: b\n  c: d: e", "not valid YAML"),
        ("kind: EvolutionRun\n---\nkind: EvolutionRun\n", "one YAML document"),
    ],
)
def test_broken_yaml_is_refused(text: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_run(parse_yaml(text))
    assert words in caught.value.problems[0]


def test_secret_values_never_echoed() -> None:
    document = with_value("spec.diagnose.judge", {**AGENT, "apiKey": "sk-very-secret-value"})
    with pytest.raises(SpecError) as caught:
        parse_run(document)
    assert "sk-very-secret-value" not in str(caught.value)


def test_minimal_run_takes_the_paper_defaults() -> None:
    run = parse_run(MINIMAL)
    spec = run.spec
    assert run.metadata.namespace == "default"
    assert spec.diagnose.probe_size == 200 and spec.diagnose.probe_seed == 42
    assert (spec.diagnose.sampling.temperature, spec.diagnose.sampling.top_p, spec.diagnose.sampling.top_k) == (0.7, 0.9, 40)
    assert spec.score.samples_per_item == 9 and spec.score.sampling.temperature == 1.0
    assert (spec.score.window.low, spec.score.window.high, spec.score.target_size) == (0.3, 0.8, 1024)
    assert spec.generate.samples_per_iteration == 1000
    assert spec.train.num_generations == 8 and spec.train.learning_rate == 1e-6 and spec.train.beta == 0.01
    assert (spec.train.epsilon_low, spec.train.epsilon_high) == (0.2, 0.3)
    assert (spec.train.reward_weights.accuracy, spec.train.reward_weights.format) == (0.9, 0.1)
    assert spec.stop.max_iterations == 3
    assert spec.storage.local is not None and spec.storage.s3 is None


def test_stage_execution_merges_overrides_over_defaults() -> None:
    document = with_value(
        "spec.execution", {"image": "img:1", "backoffLimit": 1, "nodeSelector": {"pool": "cpu"}}
    )
    document = with_value(
        "spec.train.execution", {"resources": {"limits": {"nvidia.com/gpu": 8}}, "backoffLimit": 0}, document
    )
    spec = parse_run(document).spec
    train = spec.stage_execution(StageName.train)
    assert train.image == "img:1" and train.backoff_limit == 0 and train.node_selector == {"pool": "cpu"}
    assert train.resources == Resources(limits={"nvidia.com/gpu": 8})
    assert spec.stage_execution(StageName.score) == Execution(image="img:1", backoff_limit=1, node_selector={"pool": "cpu"})


def test_round_trip_through_yaml_is_lossless() -> None:
    run = load_run(ROOT / "examples" / "evolutionrun.yaml")
    again = EvolutionRun.model_validate(yaml.safe_load(yaml.safe_dump(run.to_yaml_dict())))
    assert again == run


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_runs_validate(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    runs = [d for d in documents if d.get("kind") == "EvolutionRun"]
    for document in runs:
        parse_run(document)


@pytest.mark.slow
def test_cli_validate_reports_every_problem_and_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(with_value("spec.score", {"window": {"low": 0.9, "high": 0.1}, "samplesPerItem": 0}))
    )
    good = ROOT / "examples" / "evolutionrun.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "dpe", "validate", str(good), str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any("spec.score.window: low (0.9) must be below high (0.1)" in line for line in lines), lines
    assert any("spec.score.samplesPerItem:" in line for line in lines), lines
    assert "valid EvolutionRun ml-research/qwen25vl-7b-dpe" in result.stdout
    ok = subprocess.run([sys.executable, "-m", "dpe", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_indexed_job_limit_matches_the_operator_names() -> None:
    from dpe_operator.names import MAX_COMPLETION_INDEX

    assert MAX_INDEXED_COMPLETIONS == MAX_COMPLETION_INDEX + 1


@pytest.mark.parametrize(
    "value",
    [
        "sk-proj-Zq8XwV3mN7bR2tY6uK1pL4sD", "sk-ant-api03-abcdefghijkl", "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
        "https://gw.example/v1?api_key=abc123", "password=hunter22", "Bearer abcdefgh12345678",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "xoxb-1234567890-abcdefghij",
        "Zx9Qa2Lm7Kp4Wr8Ty3Nv6Bc1",
    ],
)
def test_credential_shaped_values_are_never_shown(value: str) -> None:
    assert looks_like_credential(value)
    assert value not in shown(value) and value not in redact_credentials(f"field: {value} is wrong")


@pytest.mark.parametrize(
    "value",
    [
        "Qwen/Qwen2.5-VL-7B-Instruct", "meta-llama/Llama-3.2-11B-Vision-Instruct", "s3://dpe-data/runs/ml/demo/iterations/3",
        "/models/Run2024/checkpoint-step1000", "registry.example.com/dpe/workload:0.1.0", "nvidia.com/gpu",
        "DPE_SECRET_OPENAI_CREDS__API_KEY", "spec.generate.agents.questionGenerator.apiKeySecret.key: required field is missing",
        "field 'apiKey' would hold a secret inline; secrets are only given by reference",
    ],
)
def test_ordinary_values_are_shown(value: str) -> None:
    assert not looks_like_credential(value)
    assert redact_credentials(value) == value


def test_shown_values_are_short_and_printable() -> None:
    assert shown("my model") == "'my model'"
    assert shown("a\x1bb") == "'a\\x1bb'"
    assert len(shown("x" * 10_000)) < 100 and "10000 characters" in shown("x" * 10_000)


@pytest.mark.parametrize("value", ["/$(DPE_S3_SECRET_KEY)", "$$(X)", "a$(", "line\nbreak", "nul\x00", "esc\x1b[0m", "c1\x85"])
def test_plain_text_refuses_substitution_and_control_characters(value: str) -> None:
    with pytest.raises(ValueError):
        check_plain(value)


@pytest.mark.parametrize("value", ["", "$", "$HOME/runs", "a$)b", "price $5 (approx)", "tab-free unicode \u00e9\U0001f600"])
def test_plain_text_accepts_dollars_without_parentheses(value: str) -> None:
    assert check_plain(value) == value


@pytest.mark.parametrize(
    "quantity, value",
    [(8, Decimal(8)), ("500m", Decimal("0.5")), ("64Gi", Decimal(64 * 2**30)), ("1.5k", Decimal(1500)), ("1e3", Decimal(1000)), ("+.5", Decimal("0.5"))],
)
def test_quantities_read_as_kubernetes_reads_them(quantity: int | str, value: Decimal) -> None:
    assert quantity_value(quantity) == value


def test_a_flood_of_problems_is_cut_short() -> None:
    document = with_value("spec.score", {f"field{i}": i for i in range(MAX_PROBLEMS + 30)})
    with pytest.raises(SpecError) as caught:
        parse_run(document)
    assert len(caught.value.problems) == MAX_PROBLEMS + 1
    assert caught.value.problems[-1] == "(document): 30 more problems not shown"


def test_duplicate_keys_name_both_lines() -> None:
    with pytest.raises(SpecError) as caught:
        parse_yaml("kind: Pod\napiVersion: v1\nkind: EvolutionRun\n")
    assert caught.value.problems == ["(document): not valid YAML at line 3, column 1: duplicate key 'kind' (first at line 1)"]
