"""Example builders and loaders. Not allowlisted by default: `traind up --example` allows examples.regression for
itself; set TRAIND_ALLOWED_MODULES=examples (clients and workers) to use them otherwise."""
