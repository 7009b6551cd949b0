"""Test infrastructure shared by several suites (servers, schema checks)."""
