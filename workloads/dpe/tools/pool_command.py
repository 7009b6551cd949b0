"""`dpe pool index --images DIR_OR_URI --out DIR_OR_URI [--run FILE]`: index an unlabeled image pool.

The index is what `data.imagePool` points at. Locations in object storage (s3://) are reached
through the store of the run named by `--run`, with the usual DPE_S3_* credentials; local folders
need no run. The last line of output is a JSON summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from dpe.manifest import SpecError, load_run
from dpe.pool import build_index, image_paths, index_table, open_images, write_index
from dpe.progress import progress
from dpe.spec import Storage
from dpe.store import ArtifactStore, StoreError, open_store

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
"""Threads decoding images; decoding and hashing release the GIL for most of their time."""


def _store(run_file: Path | None) -> tuple[Storage | None, ArtifactStore | None]:
    if run_file is None:
        return None, None
    try:
        storage = load_run(run_file).spec.storage
    except SpecError as error:
        raise click.UsageError(f"invalid EvolutionRun {run_file}: {'; '.join(error.problems)}") from None
    try:
        return storage, open_store(storage)
    except StoreError as error:
        raise click.ClickException(str(error)) from None


@click.group("pool")
def pool() -> None:
    """The unlabeled image pool the agents search."""


@pool.command("index")
@click.option("--images", required=True, help="Folder of images (png, jpg, jpeg, webp), or an s3:// prefix.")
@click.option(
    "--out", required=True, help="Folder, .parquet file or s3:// URI for the index (a folder gets index.parquet)."
)
@click.option(
    "--run",
    "run_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="EvolutionRun YAML whose storage holds the s3:// locations.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Images decoded in parallel.",
)
def index(images: str, out: str, run_file: Path | None, workers: int) -> None:
    """Index images with their captions, sizes, sharpness and perceptual hashes for PoolSearch."""
    storage, store = _store(run_file)
    try:
        files = open_images(images, storage=storage, store=store)
        listing = files.paths()
    except (ValueError, FileNotFoundError, StoreError) as error:
        raise click.UsageError(str(error)) from None
    with progress(len(image_paths(listing)), "index images") as advance:
        build = build_index(files, workers=workers, advance=advance, paths=listing)
    if not build.entries:
        raise click.ClickException(f"no readable images (png, jpg, jpeg, webp) under {images}")
    try:
        where = write_index(index_table(build.entries, files.location), out, storage=storage, store=store)
    except (ValueError, OSError, StoreError) as error:
        raise click.ClickException(f"cannot write the index to {out}: {error}") from None
    summary = {
        "index": where,
        "images": len(build.entries),
        "captioned": sum(1 for e in build.entries if e.caption),
        "duplicates": build.duplicates,
        "skipped": len(build.skipped),
    }
    click.echo(json.dumps(summary, sort_keys=True))
