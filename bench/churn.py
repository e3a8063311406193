"""Churn against the gRPC service: streams and unary calls that clients abandon at random moments.

Each client thread repeats, until its share of calls is done or the time is up, one of:
- a GenerateStream cancelled after a random delay (before, during or after its job runs),
- a GenerateStream with a short random deadline,
- a GenerateStream whose channel is closed under it (a disconnect, not a cancel),
- a GenerateStream read to its end (it must end with the result),
- a unary Generate with a random deadline or a cancel.

    python bench/churn.py --server localhost:50051 --clients 8 --calls 300 --duration 120

Prints what each kind of call ended with. Exit status 1 if the server stopped answering, or if a
call that was not abandoned failed (any code but OK, or RESOURCE_EXHAUSTED when the queue is full).
"""

import argparse
import collections
import random
import sys
import threading
import time

import grpc
from sdcore.service.gen import sdcore_service_pb2 as pb
from sdcore.service.gen import sdcore_service_pb2_grpc as pb_grpc

KINDS = ("stream_cancel", "stream_deadline", "stream_disconnect", "stream_full", "unary_abandon")


class ChurnResult:
    def __init__(self):
        self.lock = threading.Lock()
        self.outcomes = collections.Counter()  # (kind, outcome) -> count
        self.failures = []  # calls that should have succeeded and did not

    def add(self, kind, outcome):
        with self.lock:
            self.outcomes[(kind, outcome)] += 1

    def fail(self, message):
        with self.lock:
            self.failures.append(message)

    @property
    def calls(self):
        return sum(self.outcomes.values())

    def table(self):
        lines = []
        for kind in KINDS:
            row = {o: n for (k, o), n in sorted(self.outcomes.items()) if k == kind}
            if row:
                lines.append(f"{kind:18s} " + ", ".join(f"{o} {n}" for o, n in row.items()))
        return "\n".join(lines)


def _code(error):
    return error.code().name if isinstance(error, grpc.RpcError) else type(error).__name__


def _stream_cancel(stub, request, rnd, result):
    call = stub.GenerateStream(request)
    delay = rnd.uniform(0.0, 1.5)
    timer = threading.Timer(delay, call.cancel)
    timer.start()
    try:
        for _ in call:
            if rnd.random() < 0.05:
                call.cancel()  # sometimes from the reading thread, between two events
        result.add("stream_cancel", "finished")
    except grpc.RpcError as e:
        result.add("stream_cancel", _code(e))
    finally:
        timer.cancel()


def _stream_deadline(stub, request, rnd, result):
    try:
        for _ in stub.GenerateStream(request, timeout=rnd.uniform(0.01, 1.5)):
            pass
        result.add("stream_deadline", "finished")
    except grpc.RpcError as e:
        result.add("stream_deadline", _code(e))


def _stream_disconnect(address, request, rnd, result):
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.SdcoreStub(channel)
    call = stub.GenerateStream(request)
    timer = threading.Timer(rnd.uniform(0.0, 1.5), channel.close)
    timer.start()
    try:
        for _ in call:
            pass
        result.add("stream_disconnect", "finished")
    except (grpc.RpcError, ValueError) as e:
        result.add("stream_disconnect", _code(e))
    finally:
        timer.cancel()
        channel.close()


def _stream_full(stub, request, rnd, result):
    last = None
    try:
        for event in stub.GenerateStream(request, timeout=120):
            last = event
    except grpc.RpcError as e:
        result.add("stream_full", _code(e))
        if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            result.fail(f"a stream read to its end failed: {e.code().name} {e.details()}")
        return
    if last is None or last.WhichOneof("event") != "result" or not last.result.images:
        result.fail("a stream read to its end did not end with its images")
        result.add("stream_full", "no result")
    else:
        result.add("stream_full", "OK")


def _unary_abandon(stub, request, rnd, result):
    if rnd.random() < 0.5:
        try:
            stub.Generate(request, timeout=rnd.uniform(0.01, 1.5))
            result.add("unary_abandon", "OK")
        except grpc.RpcError as e:
            result.add("unary_abandon", _code(e))
        return
    future = stub.Generate.future(request)
    time.sleep(rnd.uniform(0.0, 1.0))
    future.cancel()
    try:
        future.result()
        result.add("unary_abandon", "OK")
    except grpc.FutureCancelledError:
        result.add("unary_abandon", "CANCELLED")
    except grpc.RpcError as e:
        result.add("unary_abandon", _code(e))


def churn(address, clients=8, calls=300, duration=120.0, seed=None, request=None, stop=None):
    """Run the churn; returns a ChurnResult. `stop` (a threading.Event) ends it early."""
    seed = random.randrange(2**32) if seed is None else seed
    request = request or pb.GenerateRequest(prompt="a red circle", steps=20, width=128, height=128)
    result = ChurnResult()
    end_at = time.monotonic() + duration
    counter = iter(range(calls))
    counter_lock = threading.Lock()
    stop = stop or threading.Event()

    def take():
        with counter_lock:
            return next(counter, None)

    def client(i):
        rnd = random.Random(seed * 1000 + i)
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.SdcoreStub(channel)
        try:
            while time.monotonic() < end_at and not stop.is_set():
                n = take()
                if n is None:
                    return
                req = pb.GenerateRequest()
                req.CopyFrom(request)
                req.seed = seed % 100000 * 1000 + n
                kind = rnd.choice(KINDS)
                if kind == "stream_cancel":
                    _stream_cancel(stub, req, rnd, result)
                elif kind == "stream_deadline":
                    _stream_deadline(stub, req, rnd, result)
                elif kind == "stream_disconnect":
                    _stream_disconnect(address, req, rnd, result)
                elif kind == "stream_full":
                    _stream_full(stub, req, rnd, result)
                else:
                    _unary_abandon(stub, req, rnd, result)
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 180)
    result.seed = seed
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:50051", help="host:port")
    parser.add_argument("--clients", type=int, default=8, help="client threads")
    parser.add_argument("--calls", type=int, default=300, help="calls in all")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds at most")
    parser.add_argument("--seed", type=int, default=None, help="the churn's random seed")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    result = churn(args.server, args.clients, args.calls, args.duration, args.seed)
    print(f"{result.calls} calls in {time.monotonic() - t0:.1f} s (seed {result.seed})")
    print(result.table())
    alive = True
    try:
        with grpc.insecure_channel(args.server) as channel:
            pb_grpc.SdcoreStub(channel).GetStatus(pb.StatusRequest(), timeout=10)
    except grpc.RpcError as e:
        alive = False
        print(f"the server no longer answers: {e.code().name}")
    for failure in result.failures:
        print("failure:", failure)
    return 0 if alive and not result.failures else 1


if __name__ == "__main__":
    sys.exit(main())
