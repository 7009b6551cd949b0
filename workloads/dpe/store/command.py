"""`dpe store push|pull|ls`: put a model, a dataset or an image pool where a run can read it.

    dpe store push ./qwen2.5-vl-7b s3://models/qwen2.5-vl-7b --endpoint http://minio.dpe.svc:9000
    dpe store pull s3://dpe-artifacts/runs/ml/qwen/iterations/3/train/model ./m3 --run run.yaml
    dpe store ls s3://datasets/vision-sr1-47k --run run.yaml

The endpoint comes from `--endpoint` or from the storage of the run named by `--run` (which also
allows file:// URIs inside a local store); the key pair from DPE_S3_ACCESS_KEY and
DPE_S3_SECRET_KEY. A pushed object carries its SHA-256, so every later read is checked; an object
already there with the same SHA-256 is skipped, so pushing again finishes an interrupted push.
Hidden files and folders (`.git`, `.cache`) are left out. Objects uploaded with any other S3 client
work as well: the store records their checksum the first time it reads them. The last line of output
is a JSON summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from dpe.manifest import SpecError, load_run
from dpe.progress import progress
from dpe.spec import S3Storage, Storage
from dpe.store import ArtifactStore, StoreError, locate, open_store
from dpe.store.base import sha256_of_file


def _where(uri: str, run_file: Path | None, endpoint: str | None, region: str | None) -> tuple[ArtifactStore, str]:
    """The store and key (or prefix) of `uri`, through the run's storage or the given endpoint."""
    if (run_file is None) == (endpoint is None):
        raise click.UsageError("give exactly one of --run FILE or --endpoint URL")
    try:
        if run_file is not None:
            storage = load_run(run_file).spec.storage
        else:
            if not uri.startswith("s3://"):
                raise click.UsageError(f"{uri}: with --endpoint, give an s3://bucket/key URI")
            bucket = uri.removeprefix("s3://").split("/", 1)[0]
            storage = Storage(s3=S3Storage(endpoint=endpoint, bucket=bucket, region=region))
        return locate(storage, open_store(storage), uri)
    except SpecError as error:
        raise click.UsageError(f"invalid EvolutionRun {run_file}: {'; '.join(error.problems)}") from None
    except (ValueError, StoreError) as error:
        raise click.ClickException(str(error)) from None


def _visible(relative: Path) -> bool:
    return not any(part.startswith(".") for part in relative.parts)


def _uri(uri: str, path: str) -> str:
    return uri.rstrip("/") + "/" + path if path else uri


def location_options(function: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option("--run", "run_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="EvolutionRun YAML whose spec.storage names the endpoint (or the local store)."),
        click.option("--endpoint", default=None, help="S3 endpoint, http(s)://host:port."),
        click.option("--region", default=None, help="Bucket region, when the server needs one."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group("store")
def store() -> None:
    """Upload, download and list models, datasets and image pools in the artifact store."""


@store.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("uri")
@location_options
def push(source: Path, uri: str, run_file: Path | None, endpoint: str | None, region: str | None) -> None:
    """Upload a file, or a folder's files under a prefix, with their SHA-256."""
    holder, key = _where(uri, run_file, endpoint, region)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and _visible(p.relative_to(source)))
        targets = [(path, f"{key}/{path.relative_to(source).as_posix()}" if key else path.relative_to(source).as_posix()) for path in files]
    else:
        if not key:
            raise click.UsageError(f"{uri} names a bucket; give the object's key too")
        targets = [(source, key)]
    uploaded = skipped = size = 0
    try:
        with progress(len(targets), f"push to {uri}") as advance:
            for path, target in targets:
                if holder.exists(target) and holder.checksum(target) == sha256_of_file(path):
                    skipped += 1
                else:
                    holder.put_file(target, path)
                    uploaded += 1
                    size += path.stat().st_size
                advance()
    except StoreError as error:
        raise click.ClickException(f"push stopped after {uploaded} files ({error}); run it again to continue") from None
    click.echo(json.dumps({"uri": uri, "uploaded": uploaded, "skipped": skipped, "bytes": size}))


@store.command()
@click.argument("uri")
@click.argument("destination", type=click.Path(path_type=Path))
@location_options
def pull(uri: str, destination: Path, run_file: Path | None, endpoint: str | None, region: str | None) -> None:
    """Download an object, or every object under a prefix into a folder, each checked against its SHA-256."""
    holder, key = _where(uri, run_file, endpoint, region)
    try:
        single = bool(key) and holder.exists(key)
        prefix = "" if not key else key + "/"
        targets = [(key, destination)] if single else [(k, destination / k[len(prefix):]) for k in holder.list(prefix)]
        if not targets:
            raise click.ClickException(f"nothing under {uri}")
        with progress(len(targets), f"pull from {uri}") as advance:
            for found, path in targets:
                path.parent.mkdir(parents=True, exist_ok=True)
                holder.get_file(found, path)
                advance()
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps({"uri": uri, "downloaded": len(targets), "destination": str(destination)}))


@store.command("ls")
@click.argument("uri")
@location_options
def list_objects(uri: str, run_file: Path | None, endpoint: str | None, region: str | None) -> None:
    """List the objects under a prefix, one URI per line."""
    holder, key = _where(uri, run_file, endpoint, region)
    try:
        keys = [key] if key and holder.exists(key) else holder.list(key + "/" if key else "")
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    prefix = "" if not key else key + "/"
    for found in keys:
        click.echo(uri if found == key else _uri(uri, found[len(prefix):]))

