"""Security and bad-input tests: every refusal is checked with the message a user sees."""
