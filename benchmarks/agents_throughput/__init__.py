"""Generation throughput: our scheduler and agents against the reference's structure, same endpoint.

Both sides produce the same per-type quota mix of N accepted samples against a simulated
OpenAI-compatible endpoint on 127.0.0.1 that imposes what real providers impose: requests and tokens
per minute and a cap on requests in flight (429 with Retry-After beyond them), a steady trickle of
503s, and a latency per role (the planner, edit planner, question generator and validator are slow
reasoning models; the selector is quick). The scripted models of `testkit/dpe_testkit/agent_script.py`
answer both sides alike, and a fake Serper service gives every query pictures of its own, so what
differs between the sides is how they schedule the same calls:

- OURS is the real generate-stage loop (`dpe.generation.Generation`, quotas as plans) driving
  the real `AgentProvider` (both searches at once, every candidate rated at once, one limiter per
  endpoint set to the endpoint's published limits, retries that honour Retry-After).
- REFERENCE re-creates the reference implementation's structure from its documented behaviour: a
  pool of 10 threads fed through a window of 20 futures, every call of a sample made one after
  another with the synchronous `openai` client, any failure retried 5 times after
  min(2^attempt * 2, 30) s whatever it was, the planner choosing the image type, and a quota manager
  that throws away a finished sample whose type is already full. It borrows our prompt builders,
  reply models, image encoding and local editor only so that requests and replies are the same.

The measure is accepted samples per minute: a sample counts when it lands within its type's quota.

Durations are compressed by --time-scale: every latency, backoff and quota window is multiplied by
it (HTTP timeouts are not, since no simulated latency comes near them). Rates are reported per
wall-clock minute and per simulated minute (a minute at the real latencies). The two sides run at
the same time, each against its own copy of the services in a child process, the reference in a
child process of its own. Pictures are small (128x96) and made before the clock starts, so that
CPU work, which is not compressed, stays a small part of the run.

Run: python -m benchmarks.agents_throughput [--samples N] [--time-scale S] [--seed K] [--repeats R] [--results FILE]
"""

from benchmarks.agents_throughput.cli import main
from benchmarks.agents_throughput.report import SECTION_START, command_line, record, repeats_line
from benchmarks.agents_throughput.scenario import quotas_for

__all__ = ["SECTION_START", "command_line", "main", "quotas_for", "record", "repeats_line"]
