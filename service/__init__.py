"""The sdcore gRPC service: an asyncio server around one `sdcore.Pipeline` per model.

Start it with `sdcore serve` or `python -m sdcore.service`. The engine runs in worker threads; the
event loop only moves requests, progress and replies.
"""

DEFAULT_PORT = 50051

__all__ = ["DEFAULT_PORT"]
