"""Tooling shared by the tests, the benchmarks and the chaos run (never shipped in the wheel): see
:mod:`testkit.cluster`."""
