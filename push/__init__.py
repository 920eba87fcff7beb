"""The surface: the Starlette application, WebSocket and SSE endpoints, the REST API, the sans-I/O
wire protocol, configuration, metrics, logging and the ``pushrec`` command line."""
