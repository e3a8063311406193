"""The demo page: a Gradio app (`sdcore demo`) that talks to the sdcore gRPC server.

`backend` is the gRPC side (requests, the stream, status, and what a failed call means to
the person at the page), `app` builds the page, `main` starts it, with the server in the same
process or at `--server host:port`. Nothing here calls the engine directly.
"""
