"""traind over HTTP: a laptop with a URL and a token (issue 26). :class:`jobs.remote.client.RemoteClient` (what
``jobs.client.Client(api_url=...)`` returns), its transport and storage, and :func:`resolve_target`."""
