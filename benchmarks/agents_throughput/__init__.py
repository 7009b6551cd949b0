"""Generation throughput: our scheduler and agents against the reference's structure, same endpoint.

Both sides produce the same per-type quota mix of N accepted samples against a simulated
OpenAI-compatible endpoint on 127.0.0.1 that imposes what real providers impose: requests and tokens
per minute and a cap on requests in flight (429 with Retry-After beyond them), a steady trickle of
503s, and a latency per role (the planner, edit planner, question generator and validator are slow
reasoning models; the selector is quick). The scripted models of `testkit/dpe_testkit/agent_script.py`
answer both sides alike, and a fake Serper service gives every query pictures of its own, so what
differs between the sides is how they schedule the same calls:

- OURS is the real generate-stage loop (`dpe.generation.Generation`, quotas as plans) driving
  the real `AgentProvider` (both searches at once, every candidate rated in one call, one limiter per
  endpoint set to the endpoint's published limits, retries that honour Retry-After).
- REFERENCE re-creates the reference implementation's structure from its documented behaviour: a
  pool of worker threads fed through a window of twice as many futures (it ships with 10 and 20),
  every call of a sample made one after another with the synchronous `openai` client, any failure
  retried 5 times after min(2^attempt * 2, 30) s whatever it was, the planner choosing the image
  type, and a quota manager that throws away a finished sample whose type is already full. It
  borrows our prompt builders, reply models, image encoding and local editor only so that requests
  and replies are the same. Its worker count is swept (`--ref-workers`, 10 to 128 by default), and
  ours is compared with the reference at its best.

The measure is accepted samples per minute over the whole job: a sample counts when it lands within
its type's quota. Beside it stands the physical bound: each of the endpoint's limits divided by
what one accepted sample spent of it (request-seconds in flight for the concurrency cap, admitted
requests for the request rate, tokens for the token rate); the least of the three is the most any
scheduler could accept per minute at that cost per sample, and a side's rate over its bound is how
fully it kept the binding limit busy.

Durations are compressed by --time-scale: every latency, backoff and quota window is multiplied by
it (HTTP timeouts are not, since no simulated latency comes near them). Rates are reported per
simulated minute (a minute at the real latencies). Each run is alone on the machine (apart from
`--cpu-load` busy processes) against its own fresh copy of the services in a child process; the
reference runs in a child process of its own. Pictures are small (128x96) and made before the clock
starts. CPU work is not compressed, so it weighs more here than at real latencies; CPU seconds per
accepted sample are reported for every run.

`schedule_model` replays the same job as discrete events (no processes, CPU or HTTP), to compare
scheduling policies more finely than the measurement's run-to-run spread allows.

Run: python -m benchmarks.agents_throughput [--samples N] [--time-scale S] [--seed K] [--ref-workers 10,20,32,64,128]
     [--cpu-load N] [--repeats R] [--results FILE] [--json-dir DIR]
"""

from benchmarks.agents_throughput.cli import main
from benchmarks.agents_throughput.report import SECTION_START, command_line, record
from benchmarks.agents_throughput.scenario import quotas_for

__all__ = ["SECTION_START", "command_line", "main", "quotas_for", "record"]
