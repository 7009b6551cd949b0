"""The carry step for a GPU machine: wheels named and compared with `pip list` as pip compares them;
a package already there at the wheel's version is not installed again."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_carry


def test_wheel_names_are_read_and_canonical() -> None:
    assert gpu_carry.wheel_identity("pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl") == ("pydantic-core", "2.50.5")
    assert gpu_carry.wheel_identity("trl-1.16.0-py3-none-any.whl") == ("trl", "1.16.0")
    with pytest.raises(ValueError, match="not a wheel"):
        gpu_carry.wheel_identity("trl-1.16.0.tar.gz")


def test_only_missing_or_other_versions_are_installed() -> None:
    wheels = ["trl-1.16.0-py3-none-any.whl", "Typing_Inspection-0.4.5-py3-none-any.whl", "dill-0.4.1-py3-none-any.whl"]
    installed = {"trl": "1.15.0", "typing-inspection": "0.4.5"}
    assert gpu_carry.to_install(wheels, installed) == ["trl-1.16.0-py3-none-any.whl", "dill-0.4.1-py3-none-any.whl"]


def test_install_leaves_packages_already_there_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Wheels at this environment's own versions: `pip list` has them all, so nothing is installed."""
    monkeypatch.setitem(gpu_carry.TARGET, "python", "{}.{}".format(*sys.version_info[:2]))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("pydantic", "pydantic-core", "trl"):
        (wheels / f"{name.replace('-', '_')}-{importlib.metadata.version(name)}-py3-none-any.whl").write_bytes(b"")
    assert gpu_carry.main(["install", "--wheels", str(wheels), "--target", str(tmp_path / "site")]) == 0
    assert '"install": []' in capsys.readouterr().out
    assert not (tmp_path / "site").exists()


def test_every_needed_package_is_installed_here() -> None:
    """`download` takes the versions of this environment, so each must be installed in it."""
    for name in gpu_carry.NEEDED:
        assert importlib.metadata.version(name)


def test_install_refuses_another_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu_carry.TARGET, "python", "2.7")
    assert gpu_carry.main(["install", "--wheels", str(tmp_path), "--target", str(tmp_path / "site")]) == 1
