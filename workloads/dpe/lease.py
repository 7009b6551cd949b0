"""The lease of a run: one `dpe run` at a time executes it, on whichever machine, over any store.

The executor writes `executor.json` under the run (its owner and when it last renewed it) and
renews it every RENEW_SECONDS while it works. Another `dpe run` of the same run refuses to start
while that lease is fresh, naming who holds it; a lease not renewed for LEASE_SECONDS belongs to an
executor that died, and is taken over. Two executors starting at the same moment both write, wait
CONFIRM_SECONDS and read again: only the last writer finds itself there and goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpe.store import ArtifactStore, NotFound, StoreError

LEASE_SECONDS = 30.0
"""A lease not renewed for this long is taken to belong to a dead executor."""
RENEW_SECONDS = 10.0
CONFIRM_SECONDS = 1.0

log = logging.getLogger("dpe.lease")


class RunBusy(Exception):
    """Another executor holds the run's lease."""


@dataclass(frozen=True)
class Holder:
    owner: str
    host: str
    pid: int
    renewed: float

    @classmethod
    def read(cls, value: Any) -> Holder | None:
        try:
            return cls(str(value["owner"]), str(value["host"]), int(value["pid"]), float(value["renewed"]))
        except (TypeError, KeyError, ValueError):
            return None


class Lease:
    """The run's lease while `with` lasts (module doc); `lost` is set if another executor took it."""

    def __init__(self, store: ArtifactStore, key: str, run: str, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.store = store
        self.key = key
        self.run = run
        self.clock = clock
        self.sleep = sleep
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="run-lease", daemon=True)

    def _holder(self) -> Holder | None:
        try:
            return Holder.read(self.store.get_json(self.key))
        except NotFound:
            return None

    def _write(self) -> None:
        self.store.put_json(self.key, {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "renewed": self.clock()})

    def _refuse(self, holder: Holder) -> RunBusy:
        age = max(self.clock() - holder.renewed, 0.0)
        return RunBusy(f"run {self.run} is being executed by pid {holder.pid} on host {holder.host} (lease renewed {age:.0f} s ago); "
                       f"wait for it to finish, or stop it and run this again (a lease not renewed for {LEASE_SECONDS:.0f} s is taken over)")

    def __enter__(self) -> Lease:
        holder = self._holder()
        if holder is not None and holder.owner != self.owner and self.clock() - holder.renewed < LEASE_SECONDS:
            raise self._refuse(holder)
        self._write()
        self.sleep(CONFIRM_SECONDS)
        holder = self._holder()
        if holder is None or holder.owner != self.owner:
            raise self._refuse(holder) if holder is not None else RunBusy(f"run {self.run}: the lease vanished while it was taken")
        self._renewer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
        try:
            holder = self._holder()
            if holder is not None and holder.owner == self.owner:
                self.store.delete(self.key)
        except StoreError as error:
            log.warning("could not release the lease of run %s: %s", self.run, error)

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                holder = self._holder()
                if holder is not None and holder.owner != self.owner:
                    log.error("%s", self._refuse(holder))
                    self.lost.set()
                    return
                self._write()
            except StoreError as error:
                log.warning("could not renew the lease of run %s (trying again): %s", self.run, error)
