"""Test infrastructure shared by the test suites and the benchmarks (servers, emulated cluster, schema checks)."""
