"""The five stages of an iteration, each a `dpe stage NAME` command run in a Job or a subprocess."""
