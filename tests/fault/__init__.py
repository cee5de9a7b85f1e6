"""Fault-injection tests: real redis-server, real worker and supervisor processes, real signals."""
