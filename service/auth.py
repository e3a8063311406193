"""Optional API key: every call must carry metadata `x-api-key: <key>`, except health checks,
which load balancers make without credentials."""

import hmac

import grpc

API_KEY_HEADER = "x-api-key"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_key, metrics=None):
        self._key = api_key.encode()
        self._metrics = metrics

    def _allowed(self, details):
        if details.method.startswith(OPEN_PREFIXES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == API_KEY_HEADER:
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._key)
        return False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or self._allowed(handler_call_details):
            return handler
        method = handler_call_details.method.lstrip("/")
        if self._metrics is not None:
            self._metrics.requests.labels(rpc=method, code="UNAUTHENTICATED").inc()
        return _refusing_handler(handler)


async def _refuse(request_or_iterator, context):
    await context.abort(
        grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong API key (metadata {API_KEY_HEADER})"
    )


async def _refuse_stream(request_or_iterator, context):
    await _refuse(request_or_iterator, context)
    yield  # pragma: no cover - makes this an async generator, as streaming handlers are


def _refusing_handler(handler):
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    kwargs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_refuse_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(_refuse_stream, **kwargs)
