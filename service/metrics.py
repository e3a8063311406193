"""Prometheus metrics of one server, in a registry of its own (so that several servers can live
in one process, as in the tests), served over HTTP on --metrics-port."""

import prometheus_client as prom

# Latency buckets from a quick status call up to a long generation on the CPU.
LATENCY_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300, 600)


class Metrics:
    def __init__(self):
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "sdcore_requests",
            "RPCs answered, by method and status code",
            ["rpc", "code"],
            registry=r,
        )
        self.latency = prom.Histogram(
            "sdcore_request_latency_seconds",
            "Time from the start of an RPC to its answer",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = prom.Gauge("sdcore_queue_depth", "Jobs waiting in the queue", registry=r)
        self.jobs_in_flight = prom.Gauge(
            "sdcore_jobs_in_flight", "Jobs the engine is working on", registry=r
        )
        self.images = prom.Counter("sdcore_images", "Images generated and returned", registry=r)
        self.batch_requests = prom.Histogram(
            "sdcore_batch_requests",
            "Requests that shared one engine call",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.rejections = prom.Counter(
            "sdcore_queue_rejections", "Requests refused because the queue was full", registry=r
        )
        self.http_requests = prom.Counter(
            "sdcore_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=r,
        )
        self.http_latency = prom.Histogram(
            "sdcore_http_request_latency_seconds",
            "Time from the start of an HTTP request to its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._http = None

    def observe_rpc(self, rpc, code, seconds):
        self.requests.labels(rpc=rpc, code=code.name).inc()
        self.latency.labels(rpc=rpc).observe(seconds)

    def observe_http(self, route, status, seconds):
        self.http_requests.labels(route=route, status=str(status)).inc()
        self.http_latency.labels(route=route).observe(seconds)

    def start_http(self, port, host="0.0.0.0"):
        """Serve /metrics; returns the port (useful when port is 0 in tests)."""
        httpd, _thread = prom.start_http_server(port, addr=host, registry=self.registry)
        self._http = httpd
        return httpd.server_port

    def stop_http(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def render(self):
        return prom.generate_latest(self.registry).decode()
