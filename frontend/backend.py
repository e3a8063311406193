"""The page's only way to the engine: the sdcore.v1 gRPC API, through the generated stubs."""

import pathlib

import grpc
from sdcore.service.client import proto_request
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc

# what the person at the page is told, by status code; the server's own message follows
_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "The server is unavailable",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "The server's queue is full; try again in a moment",
    grpc.StatusCode.INVALID_ARGUMENT: "Invalid input",
    grpc.StatusCode.CANCELLED: "Cancelled",
    grpc.StatusCode.DEADLINE_EXCEEDED: "The server took too long",
    grpc.StatusCode.UNAUTHENTICATED: "The server refused the API key",
    grpc.StatusCode.INTERNAL: "The engine failed",
}


def describe_error(error, address=""):
    """One line for the page: what went wrong in plain words, then the server's details."""
    code = error.code()
    details = error.details() or ""
    headline = _MESSAGES.get(code, f"The server answered {code.name}")
    if code == grpc.StatusCode.UNAVAILABLE and address:
        headline += f" at {address}"
    if code == grpc.StatusCode.UNAVAILABLE and _is_connection_failure(details):
        # grpc's text for a refused connection is long and internal; say what it means
        return f"{headline}: no sdcore server answers there (is `sdcore serve` running?)"
    return f"{headline}: {details}" if details else headline


def _is_connection_failure(details):
    lowered = details.lower()
    return any(
        s in lowered
        for s in ("failed to connect", "connection refused", "connect failed", "dns resolution")
    )


class Backend:
    """A channel to one server. Blocking calls: Gradio runs each handler in its own thread."""

    api = "gRPC"  # what the status panel says the page talks; HttpBackend has the same interface

    def __init__(self, address, api_key=None, tls=False, ca_cert=None, timeout=None):
        self.address = address
        self.timeout = timeout  # seconds for a whole generation; None: no deadline
        options = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        if tls:
            root = pathlib.Path(ca_cert).read_bytes() if ca_cert else None
            credentials = grpc.ssl_channel_credentials(root)
            self.channel = grpc.secure_channel(address, credentials, options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self.stub = pb_grpc.SdcoreStub(self.channel)
        self.metadata = (("x-api-key", api_key),) if api_key else None

    def status(self, timeout=5.0):
        return self.stub.GetStatus(pb.StatusRequest(), timeout=timeout, metadata=self.metadata)

    def models(self, timeout=5.0):
        reply = self.stub.ListModels(
            pb.ListModelsRequest(), timeout=timeout, metadata=self.metadata
        )
        return list(reply.models)

    def generate_stream(self, request, job_id):
        """GenerateStream's events for a GenerationRequest: queued, progress (with a
        preview), then the result. The server resolves and checks the request."""
        return self.stub.GenerateStream(
            proto_request(request, job_id=job_id, preview=True),
            timeout=self.timeout,
            metadata=self.metadata,
        )

    def cancel(self, job_id):
        return self.stub.Cancel(
            pb.CancelRequest(job_id=job_id), timeout=5.0, metadata=self.metadata
        )

    def close(self):
        self.channel.close()
