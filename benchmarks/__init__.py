"""The benchmarks, each run from the repository root as `python -m benchmarks.NAME`; results go to
RESULTS.md and results/ (reporting.py)."""
