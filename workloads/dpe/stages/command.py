"""`dpe stage NAME --run FILE --iteration K [--model URI] [--shard i/n]`: one stage, in a Job or a subprocess.

Exit status tells the executor what to do: 0 the stage is complete (its result.json exists), 1 a
failure worth retrying, 3 a permanent failure (invalid spec, missing model, refused credentials)
that no retry can fix. The last line of a failure is also written to the Kubernetes termination
log when one exists, so the operator can show it in status without reading Pod logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from dpe.contract import PERMANENT_EXIT
from dpe.manifest import SpecError
from dpe.spec import ModelEndpoint, StageName
from dpe.stages.context import Shard, StageContext, open_context
from dpe.store import PermanentStoreError

TERMINATION_LOG = Path("/dev/termination-log")

log = logging.getLogger("dpe.stage")


def _answerer_factory(ctx: StageContext, min_image_side: int) -> Callable[[], Any]:
    def build() -> Any:
        from dpe.models.inference import open_answerer

        return open_answerer(ctx.model_dir(ctx.model_uri), min_image_side=min_image_side)

    return build


def _judge(endpoint: ModelEndpoint | None) -> Any:
    if endpoint is None:
        return None
    from dpe.judge import LlmJudge
    from dpe.secrets import resolve_secret

    key = None if endpoint.api_key_secret is None else resolve_secret(endpoint.api_key_secret)
    return LlmJudge(endpoint, key)


def _report_failure(message: str, permanent: bool) -> None:
    log.error(message)
    click.echo(f"error: {message}", err=True)
    if TERMINATION_LOG.is_file():  # the kubelet makes it in a container; never create one elsewhere
        try:
            TERMINATION_LOG.write_text(("permanent: " if permanent else "") + message[-3500:])
        except OSError:
            pass
    sys.exit(PERMANENT_EXIT if permanent else 1)


def _run_stage(stage: StageName, run_file: Path, iteration: int, model: str | None, store: Path | None, shard: str | None, body: Callable[[StageContext], dict[str, Any]]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        ctx = open_context(run_file, iteration, stage, model, store_dir=store, shard=None if shard is None else Shard.parse(shard))
        result = body(ctx)
    except SpecError as error:
        _report_failure(f"invalid EvolutionRun: {'; '.join(error.problems)}", permanent=True)
    except (PermanentStoreError, FileNotFoundError, ValueError) as error:
        _report_failure(f"{type(error).__name__}: {error}", permanent=True)
    except Exception as error:
        log.exception("stage %s failed", stage.value)
        _report_failure(f"{type(error).__name__}: {error}", permanent=False)
    click.echo(json.dumps({k: v for k, v in result.items() if k != "weakness_table"}, sort_keys=True))


def common(function: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option("--run", "run_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="EvolutionRun YAML."),
        click.option("--iteration", type=int, required=True, help="Iteration index (0 is the baseline)."),
        click.option("--model", default=None, help="Model to use (default: the run's base model)."),
        click.option("--store", type=click.Path(file_okay=False, path_type=Path), default=None, help="Use this local directory as the store."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group()
def stage() -> None:
    """Run one stage of one iteration (what a Job or the local executor runs)."""


@stage.command()
@common
def diagnose(run_file: Path, iteration: int, model: str | None, store: Path | None) -> None:
    """Answer the fixed probe set, grade, attribute failures, write weights, quotas and the brief."""
    from dpe.stages import diagnose as stage_module

    def body(ctx: StageContext) -> dict[str, Any]:
        settings = ctx.run.spec.diagnose
        return stage_module.run(ctx, _answerer_factory(ctx, settings.min_image_side), _judge(settings.judge))

    _run_stage(StageName.diagnose, run_file, iteration, model, store, None, body)


@stage.command()
@common
@click.option("--shard", default=None, help="Evaluate only part i of n (i/n); merge afterwards with --merge.")
@click.option("--merge", is_flag=True, help="Combine the finished shards and write the stage's result.")
def evaluate(run_file: Path, iteration: int, model: str | None, store: Path | None, shard: str | None, merge: bool) -> None:
    """Evaluate a model on the benchmark suite."""
    from dpe.stages import evaluate as stage_module

    def body(ctx: StageContext) -> dict[str, Any]:
        settings = ctx.run.spec
        return stage_module.run(
            ctx, _answerer_factory(ctx, settings.diagnose.min_image_side), _judge(settings.evaluate.judge), merge=merge
        )

    _run_stage(StageName.evaluate, run_file, iteration, model, store, shard, body)


@stage.command()
@common
@click.option("--shard", default=None, help="Generate only part i of n (i/n); merge afterwards with --merge.")
@click.option("--merge", is_flag=True, help="Combine the finished shards and write the stage's result.")
def generate(run_file: Path, iteration: int, model: str | None, store: Path | None, shard: str | None, merge: bool) -> None:
    """Generate new samples for the diagnosed weaknesses, held to the per-type quotas."""
    from dpe.stages import generate as stage_module

    _run_stage(StageName.generate, run_file, iteration, model, store, shard, lambda ctx: stage_module.run(ctx, merge=merge))


@stage.command()
@common
@click.option("--shard", default=None, help="Score only part i of n (i/n); merge afterwards with --merge.")
@click.option("--merge", is_flag=True, help="Combine the finished shards, compute pass rates and select.")
def score(run_file: Path, iteration: int, model: str | None, store: Path | None, shard: str | None, merge: bool) -> None:
    """Answer every new sample n times and keep those the model solves only sometimes."""
    from dpe.stages import score as stage_module

    def body(ctx: StageContext) -> dict[str, Any]:
        return stage_module.run(ctx, _answerer_factory(ctx, ctx.run.spec.diagnose.min_image_side), merge=merge)

    _run_stage(StageName.score, run_file, iteration, model, store, shard, body)


WORKER_ARGV_ENV = "DPE_STAGE_ARGV"
"""The stage's command line as JSON, handed to torchrun's workers through their environment."""
WORKER_MODULE = "dpe.stages.worker"


def distributed_launch(argv: list[str], environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]] | None:
    """(command, environment) that runs this same stage command under torchrun, when the Job has
    several GPUs (or nodes) and is not under it yet; None otherwise.

    torchrun reads its settings from the PET_* environment the operator sets (PET_NNODES,
    PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT), as Kubeflow Trainer does.
    The stage's own arguments never pass through torchrun's parser, which takes any option it can
    abbreviate to one of its own (`--run` for `--run-path`): its workers find them in the environment.
    """
    if "LOCAL_RANK" in environ:
        return None
    nproc = int(environ.get("PET_NPROC_PER_NODE", "0") or 0)
    nnodes = int(environ.get("PET_NNODES", "1") or 1)
    if nproc <= 1 and nnodes <= 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "-m", WORKER_MODULE], {**environ, WORKER_ARGV_ENV: json.dumps(argv)}


@stage.command()
@common
def train(run_file: Path, iteration: int, model: str | None, store: Path | None) -> None:
    """GRPO on the kept samples, from the iteration's input model; exports M(k) to the store."""
    relaunch = distributed_launch(sys.argv[1:], os.environ)
    if relaunch is not None:
        command, environment = relaunch
        os.execve(command[0], command, environment)
    from dpe.stages import train as stage_module

    _run_stage(StageName.train, run_file, iteration, model, store, None, lambda ctx: stage_module.run(ctx))
