"""One torchrun worker of a distributed stage: `python -m torch.distributed.run -m dpe.stages.worker`.

The stage's command line comes from the environment (`WORKER_ARGV_ENV`, set by
`dpe.stages.command.distributed_launch`), so none of it passes through torchrun's own parser.
"""

import json
import os

from dpe.cli import main
from dpe.stages.command import WORKER_ARGV_ENV

main(args=json.loads(os.environ[WORKER_ARGV_ENV]), prog_name="dpe")
