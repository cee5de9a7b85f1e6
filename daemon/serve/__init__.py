"""``traind serve``: REST API, live dashboard (Server-Sent Events) and Prometheus metrics in one stateless process.

>>> # from daemon.serve.app import create_app; app = create_app(ServeSettings(api_token="..."))
"""
