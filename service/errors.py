"""Failures the service reports to clients, each with the gRPC status code it maps to."""

import grpc

from sdcore.request import ECHO_CHARS, echo

# How much of a value a client sent is quoted back in an error message or a log line: the
# request layer's rule (sdcore.request.echo), so that the engine and the service quote alike.
QUOTE_LIMIT = ECHO_CHARS


def quoted(value, limit=QUOTE_LIMIT):
    """repr() of a client's value, cut to `limit` characters: a 10 MB job id must not become a
    10 MB error message (larger than a client accepts as metadata) or log line."""
    return echo(value, limit)


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """A request field with a bad value; the message starts with the field's name."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The model is still loading, or the server is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class JobCancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class DeadlinePassed(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class EngineError(ServiceError):
    """The engine raised; the message is the engine's."""

    code = grpc.StatusCode.INTERNAL
