"""`python -m benchmarks.agents_throughput`: the comparison from the command line."""

from benchmarks.agents_throughput.cli import main

if __name__ == "__main__":
    main()
