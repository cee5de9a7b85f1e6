"""The wire contract every traind process shares: job states and transitions, events, the spec, Redis keys and Lua
scripts, queue messages, code references and the allowlist."""
