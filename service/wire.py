"""Requests that do not parse are the client's mistake: INVALID_ARGUMENT, not UNKNOWN.

grpc.aio parses a request before the servicer sees it; when the bytes are not a valid message
(corrupt wire format, a string field that is not UTF-8) it answers UNKNOWN "Unexpected
<DecodeError>". This interceptor gives every method whose request is a single message a handler
that receives the raw bytes and parses them itself, so that a bad request gets INVALID_ARGUMENT
with the reason. Methods with a stream of requests (reflection), and those written as async
generators (health's Watch), are left as they are: wrapping a generator in another would leave
the inner one to be closed by the garbage collector after its call is gone.
"""

import inspect

import grpc


class DecodeErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        behaviour = handler.unary_unary or handler.unary_stream
        if not inspect.iscoroutinefunction(behaviour):
            return handler
        parse = handler.request_deserializer
        kwargs = dict(request_deserializer=None, response_serializer=handler.response_serializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_parsing(behaviour, parse), **kwargs)
        return grpc.unary_stream_rpc_method_handler(_parsing(behaviour, parse), **kwargs)


async def _parse(parse, raw, context):
    try:
        return parse(raw)
    except Exception as e:  # protobuf's DecodeError, or whatever a deserializer raises
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid message: {str(e)[:200]}"
        )


def _parsing(behaviour, parse):
    async def call(raw, context):
        request = await _parse(parse, raw, context)
        return await behaviour(request, context)

    return call
