"""The repository's Dockerfile, read with BuildKit's own parser (the `dockerfile` package), by stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    commands: tuple[dockerfile.Command, ...]

    def instructions(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd.upper()]

    def exec_form(self, cmd: str) -> list[str]:
        """The last ENTRYPOINT or CMD of the stage, which must be in exec (JSON) form."""
        (*_, last) = self.instructions(cmd)
        assert last.json, f"{cmd} of stage {self.name} is in shell form"
        return list(last.value)


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """ARGs declared before the first FROM, with their defaults."""
    found: dict[str, str] = {}
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            break
        if command.cmd == "ARG":
            for item in command.value:
                name, _, default = item.partition("=")
                found[name] = default
    return found


def stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    result: dict[str, Stage] = {}
    current: list[dockerfile.Command] = []
    header: dockerfile.Command | None = None

    def close() -> None:
        if header is not None:
            value = list(header.value)
            name = value[2] if len(value) == 3 and value[1].upper() == "AS" else str(len(result))
            result[name] = Stage(name, value[0], tuple(current))

    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            close()
            header, current = command, []
        elif header is not None:
            current.append(command)
    close()
    return result


def stage_args(stage: Stage) -> dict[str, str]:
    """ARG name -> default of one stage."""
    found: dict[str, str] = {}
    for command in stage.instructions("ARG"):
        for item in command.value:
            name, _, default = item.partition("=")
            found[name] = default
    return found


def operator_command() -> list[str]:
    """What the operator image runs: its ENTRYPOINT (the chart appends its own args)."""
    return stages()["operator"].exec_form("ENTRYPOINT")
