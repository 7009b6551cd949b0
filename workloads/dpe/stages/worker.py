"""One torchrun worker of a distributed stage: `python -m torch.distributed.run -m dpe.stages.worker`.

The stage's command line comes from the environment (`WORKER_ARGV_ENV`, set by
`dpe.stages.command.distributed_launch`), so none of it passes through torchrun's own parser.
"""

import json
import os

from dpe.stages.command import WORKER_ARGV_ENV, stage

argv = json.loads(os.environ[WORKER_ARGV_ENV])
if argv[:1] != ["stage"]:
    raise SystemExit(f"{WORKER_ARGV_ENV} must hold a `dpe stage ...` command line, got {argv[:3]}")
stage(args=argv[1:], prog_name="dpe stage")
