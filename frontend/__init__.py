"""The demo page: a Gradio app (`sdcore demo`) that talks to an sdcore server over its gRPC API
or its HTTP API.

`backend` is the gRPC side (requests, the stream, status, and what a failed call means to
the person at the page), `http_backend` the same interface over the HTTP API's /sdapi/v1
routes, `app` builds the page, `main` starts it, with the server in the same process or at
`--server host:port` (gRPC) or `--server http(s)://host:port` (HTTP). Nothing here calls the
engine directly.
"""
