"""The `dpe` command line: one entry point for users, Jobs and the local executor."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dpe import __version__
from dpe.crd import stale_crds, write_crds
from dpe.manifest import SpecError, load_run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """DPE: diagnose a vision-language model, generate data for its blind spots, train, repeat."""


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"dpe {__version__}")


@main.command()
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("crds"),
    show_default=True,
    help="Directory to write the CRD YAML files into.",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the files differ from the models.")
def crds(out: Path, check: bool) -> None:
    """Generate the EvolutionRun and Iteration CRDs from the spec models."""
    if check:
        stale = stale_crds(out)
        for name in stale:
            click.echo(f"{out / name}: out of date; run `dpe crds --out {out}`", err=True)
        sys.exit(1 if stale else 0)
    for path in write_crds(out):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check EvolutionRun YAML files; print one line per problem naming the field.

    Exit status: 0 when every file is a valid run, 1 otherwise. Files of any content get a verdict:
    oversized, malformed or hostile YAML is refused with a message, never a traceback.
    """
    failed = False
    for path in files:
        try:
            run = load_run(path)
        except SpecError as error:
            failed = True
            for problem in error.problems:
                click.echo(f"{path}: {problem}", err=True)
            continue
        click.echo(f"{path}: valid EvolutionRun {run.metadata.namespace}/{run.metadata.name}")
    sys.exit(1 if failed else 0)


@main.group()
def model() -> None:
    """Build and inspect vision-language models."""


@model.command("tiny")
@click.option("--arch", type=click.Choice(["qwen2.5-vl", "qwen3-vl"]), default="qwen2.5-vl", show_default=True)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to save to.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initialisation.")
def model_tiny(arch: str, out: Path, seed: int) -> None:
    """Build a tiny randomly initialised VLM (about 0.2 M parameters) with an offline tokenizer."""
    from dpe.models.tiny import build_tiny_model, world_corpus

    build_tiny_model(arch, out, corpus=world_corpus(), seed=seed)
    click.echo(f"wrote {arch} to {out}")


@main.command()
@click.argument("run_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None, help="Local store directory (default: the run's spec.storage).")
@click.option("--parallel-stages", type=click.IntRange(min=1), default=None,
              help="Most stages running at once, sharing the cores (1: one after another with every core, evaluations last). "
                   "Default: 2 on 4 cores or more, else 1.")
def run(run_file: Path, store: Path | None, parallel_stages: int | None) -> None:
    """Run the whole spiral on this machine; Ctrl-C and rerun continue where it stopped.

    Exit status: 0 succeeded or suspended, 1 failed, 3 invalid run file, 4 another executor runs it,
    5 the store cannot be read (a file in it truncated or corrupt, or the store unreachable).
    """
    from dpe.executor import LocalExecutor
    from dpe.lease import RunBusy
    from dpe.store import StoreError

    try:
        status = LocalExecutor(run_file, store, parallel_stages=parallel_stages).execute()
    except SpecError as error:
        for problem in error.problems:
            click.echo(f"{run_file}: {problem}", err=True)
        sys.exit(3)
    except RunBusy as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(4)
    except StoreError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(5)
    except KeyboardInterrupt:
        click.echo("interrupted; run the same command again to continue", err=True)
        sys.exit(130)
    sys.exit(0 if status["phase"] in ("Succeeded", "Suspended") else 1)


@main.command()
@click.argument("run_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", type=click.IntRange(1, 20), default=3, show_default=True, help="Runs per arm.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("dpe-ablation"), show_default=True)
def ablate(run_file: Path, seeds: int, out: Path) -> None:
    """Diagnosis-driven against uniform mixture, same budget, several seeds; reports intervals."""
    from dpe.ablation import ablate as run_ablation

    try:
        summary = run_ablation(run_file, seeds, out)
    except SpecError as error:
        for problem in error.problems:
            click.echo(f"{run_file}: {problem}", err=True)
        sys.exit(3)
    click.echo(summary["table"])


@main.command()
@click.argument("store_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def status(store_dir: Path) -> None:
    """Print the table of the runs in a local store: iterations, stages, scores, weaknesses.

    A run whose files are truncated or corrupt gets one line on stderr naming the file, and the exit status is 1.
    """
    from dpe.executor import print_status

    sys.exit(print_status(store_dir))


def _register_commands() -> None:
    from dpe.stages.command import stage
    from dpe.store.command import store
    from dpe.tools.pool_command import pool
    from dpe.world.command import world

    main.add_command(world)
    main.add_command(stage)
    main.add_command(pool)
    main.add_command(store)


_register_commands()
