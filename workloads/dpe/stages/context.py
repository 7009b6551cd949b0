"""What every stage gets: the run, its store, its iteration, its model, and where its keys live.

A stage is complete if and only if its `result.json` exists, so `StageContext.finish` writes that
summary last and `StageContext.complete` is the whole idempotence check: rerunning a finished
stage does nothing, rerunning a crashed one continues from the partial outputs it left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dpe import layout
from dpe.results import RESULT_MODELS, StageResult, parse_result
from dpe.manifest import load_run
from dpe.spec import EvolutionRun, LocalStorage, StageName, Storage
from dpe.store import ArtifactStore, open_store

R = TypeVar("R", bound=StageResult)



@dataclass(frozen=True)
class Shard:
    """Part `index` (0-based) of `count` parts of a sharded stage."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read `i/n` (0 <= i < n)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"shard '{text}' is not of the form i/n, for example 0/4") from None
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard '{text}' needs 0 <= i < n")
        return cls(index, count)

    def takes(self, position: int) -> bool:
        """Whether the item at `position` of a fixed ordering belongs to this shard."""
        return position % self.count == self.index


@dataclass
class StageContext:
    run: EvolutionRun
    storage: Storage
    store: ArtifactStore
    iteration: int
    stage: StageName
    model_uri: str
    shard: Shard | None = None

    @property
    def namespace(self) -> str:
        return self.run.metadata.namespace

    @property
    def name(self) -> str:
        return self.run.metadata.name

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"dpe.stage.{self.stage.value}")

    def key(self, *parts: str) -> str:
        """A key under this stage (under this shard's folder when sharded)."""
        if self.shard is not None:
            return layout.shard_key(self.namespace, self.name, self.iteration, self.stage, self.shard.index, self.shard.count, *parts)
        return layout.stage_key(self.namespace, self.name, self.iteration, self.stage, *parts)

    def stage_key(self, stage: StageName, *parts: str, iteration: int | None = None) -> str:
        """A key of another stage's outputs (same iteration unless given)."""
        k = self.iteration if iteration is None else iteration
        return layout.stage_key(self.namespace, self.name, k, stage, *parts)

    def run_key(self, *parts: str) -> str:
        return layout.run_key(self.namespace, self.name, *parts)

    def uri(self, key: str) -> str:
        """How results name `key`: `store:<key>` in a local store (a copied store names its own
        objects), its s3:// URI in S3 (layout.store_reference)."""
        return layout.store_reference(self.storage, key)

    @property
    def result_key(self) -> str:
        if self.shard is not None:
            return layout.shard_result_key(self.namespace, self.name, self.iteration, self.stage, self.shard.index, self.shard.count)
        return layout.result_key(self.namespace, self.name, self.iteration, self.stage)

    def complete(self) -> bool:
        return self.store.exists(self.result_key)

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write result.json, the last write of the stage, once its stage's model accepts it."""
        body = {"stage": self.stage.value, "iteration": self.iteration, "model": self.model_uri, **summary}
        written = parse_result(body).model_dump(mode="json", exclude_unset=True)
        self.store.put_json(self.result_key, written)
        return written

    def result_of(self, model: type[R], iteration: int | None = None) -> R:
        """Another stage's result (it must be complete), as that stage's model."""
        stage = next(stage for stage, found in RESULT_MODELS.items() if found is model)
        k = self.iteration if iteration is None else iteration
        return model.model_validate(self.store.get_json(layout.result_key(self.namespace, self.name, k, stage)))

    @property
    def cache_dir(self) -> Path:
        from dpe.models.loading import default_cache_dir

        return default_cache_dir()

    def model_dir(self, reference: str) -> Path:
        """A local directory holding the referenced model (a built-in one as this run built it)."""
        from dpe.models.loading import resolve_model

        return resolve_model(reference, self.storage, self.store, self.cache_dir, run=(self.namespace, self.name))


def open_context(
    run_file: Path, iteration: int, stage: StageName, model_uri: str | None, *, store_dir: Path | None = None, shard: Shard | None = None
) -> StageContext:
    """Build the context of one stage invocation from its command-line arguments."""
    run = load_run(run_file)
    storage = run.spec.storage if store_dir is None else Storage(local=LocalStorage(path=str(store_dir)))
    if iteration < 0:
        raise ValueError("iteration must be >= 0")
    return StageContext(
        run=run,
        storage=storage,
        store=open_store(storage),
        iteration=iteration,
        stage=stage,
        model_uri=model_uri or run.spec.base_model,
        shard=shard,
    )
