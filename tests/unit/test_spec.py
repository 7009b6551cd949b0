"""EvolutionRun validation: every malformed document is refused with a message naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpe_testkit.malformed import AGENT, MALFORMED, MINIMAL, Malformed, with_value

from dpe.manifest import SpecError, load_run, parse_run, parse_yaml
from dpe.spec import EvolutionRun, Execution, Resources, StageName

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
