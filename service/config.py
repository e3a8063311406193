"""Server configuration from command-line flags and GRPC_* (and SDCORE_HTTP_PORT) environment
variables.

A flag given on the command line wins over its environment variable, which wins over the
default. Every value is checked once, at start; a bad one raises ConfigError naming the flag
or variable it came from.
"""

import argparse
import dataclasses
import importlib.util
import math
import os
import ssl

from sdcore.service import DEFAULT_PORT


class ConfigError(ValueError):
    """A configuration value that the server cannot start with."""


# Largest message gRPC can be told to accept (its limits are signed 32-bit).
MAX_MESSAGE_SIZE_LIMIT = 2**31 - 1
# The default cost budget per request, by device, in 2^20 pixel-steps. On the CPU, 32 allows
# 512x512 at 30 steps for 2 images, or the shipped model's 128x128 at 150 steps for 8 images, and
# refuses what would hold the engine for hours (2048x2048, 150 steps, 8 images is 4800).
DEFAULT_MAX_REQUEST_COST = {"cpu": 32.0, "cuda": 1024.0}
# The queue's work, by default, in requests of the largest cost.
DEFAULT_QUEUE_COST_REQUESTS = 8


@dataclasses.dataclass
class ServerConfig:
    host: str = "[::]"
    port: int = DEFAULT_PORT
    http_port: int = 0  # 0: no HTTP API
    model: str | None = None  # None: the model shipped in the sdcore package
    device: str = "cpu"
    max_workers: int = 4  # engine threads (the loop itself never runs the engine)
    max_message_size: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = None  # None: no limit from gRPC itself
    enable_reflection: bool = True
    require_api_key: bool | None = None  # None: on exactly when a key is set
    api_key: str | None = None
    use_tls: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    queue_size: int = 32  # jobs waiting, not counting those running
    max_batch_size: int = 4  # images in one engine call; 1 turns batching off
    batch_wait_ms: float = 0.0  # how long an idle engine waits for more compatible requests
    default_steps: int = 20
    max_steps: int = 150
    max_images_per_request: int = 8
    max_prompt_chars: int = 4000
    grace_period: float = 10.0  # seconds in-flight work gets on shutdown before it is cancelled
    metrics_port: int = 0  # 0: no metrics endpoint
    metrics_host: str | None = None  # None: the gRPC host
    # Cost of a request: width * height * steps * images, in units of 2^20 pixel-steps. None: the
    # device's default (DEFAULT_MAX_REQUEST_COST); the queue holds at most max_queue_cost of work.
    max_request_cost: float | None = None
    max_queue_cost: float | None = None
    log_level: str = "INFO"
    log_json: bool = True

    def check(self):
        """Raise ConfigError on the first inconsistent or out-of-range value."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port (GRPC_PORT): {self.port} is not between 0 and 65535")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(
                f"HTTP port (SDCORE_HTTP_PORT): {self.http_port} is not between 0 and 65535"
            )
        if self.http_port and self.http_port in (self.port, self.metrics_port):
            raise ConfigError("--http-port: must differ from the gRPC and metrics ports")
        if self.http_port:
            missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
            if missing:
                raise ConfigError(
                    f"--http-port: the HTTP API needs {' and '.join(missing)}, not installed; "
                    "install them with: pip install 'sdcore[http]'"
                )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port: {self.metrics_port} is not between 0 and 65535")
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError("--metrics-port: must differ from the gRPC port")
        if self.max_workers < 1:
            raise ConfigError(f"max workers (GRPC_MAX_WORKERS): {self.max_workers} is below 1")
        if not 65536 <= self.max_message_size <= MAX_MESSAGE_SIZE_LIMIT:
            raise ConfigError(
                f"max message size (GRPC_MAX_MESSAGE_SIZE): {self.max_message_size} bytes is not "
                f"between 65536 and {MAX_MESSAGE_SIZE_LIMIT}"
            )
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 1:
            raise ConfigError(
                f"max concurrent RPCs (GRPC_MAX_CONCURRENT_RPCS): {self.max_concurrent_rpcs} "
                "is below 1"
            )
        if self.require_api_key is None:
            self.require_api_key = bool(self.api_key)
        if self.require_api_key and not self.api_key:
            raise ConfigError(
                "an API key is required (GRPC_REQUIRE_API_KEY) but none is set: "
                "give --api-key or GRPC_API_KEY"
            )
        if self.api_key and not self.require_api_key:
            raise ConfigError(
                "an API key is set (--api-key or GRPC_API_KEY) but --no-require-api-key or "
                "GRPC_REQUIRE_API_KEY=false turns checking it off: the server would accept any "
                "caller; drop one of the two"
            )
        if self.use_tls:
            for name, path in (
                ("cert file (GRPC_CERT_FILE)", self.cert_file),
                ("key file (GRPC_KEY_FILE)", self.key_file),
            ):
                if not path:
                    raise ConfigError(f"TLS is on (GRPC_USE_TLS) but no {name} is given")
                if not os.path.isfile(path):
                    raise ConfigError(f"{name}: {path!r} is not a readable file")
            _check_tls_pair(self.cert_file, self.key_file)
        if self.queue_size < 1:
            raise ConfigError(f"--queue-size: {self.queue_size} is below 1")
        if self.max_batch_size < 1:
            raise ConfigError(f"--max-batch-size: {self.max_batch_size} is below 1")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"--batch-wait-ms: {self.batch_wait_ms} is negative")
        if not 1 <= self.default_steps <= self.max_steps:
            raise ConfigError(
                f"--default-steps: {self.default_steps} is not between 1 and --max-steps "
                f"({self.max_steps})"
            )
        if self.max_images_per_request < 1:
            raise ConfigError(f"--max-images: {self.max_images_per_request} is below 1")
        if self.grace_period < 0:
            raise ConfigError(f"--grace-period: {self.grace_period} is negative")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(
                f"--device: {self.device!r} is not cpu or cuda (the first GPU; choose another "
                "with CUDA_VISIBLE_DEVICES)"
            )
        if self.metrics_host is None:
            self.metrics_host = self.host
        if self.max_request_cost is None:
            self.max_request_cost = DEFAULT_MAX_REQUEST_COST[self.device]
        if not (self.max_request_cost > 0 and math.isfinite(self.max_request_cost)):
            raise ConfigError(
                f"--max-request-cost (SDCORE_MAX_REQUEST_COST): {self.max_request_cost} is not a "
                "positive number"
            )
        if self.max_queue_cost is None:
            self.max_queue_cost = DEFAULT_QUEUE_COST_REQUESTS * self.max_request_cost
        queue_cost = self.max_queue_cost
        if not (queue_cost >= self.max_request_cost and math.isfinite(queue_cost)):
            raise ConfigError(
                f"--max-queue-cost (SDCORE_MAX_QUEUE_COST): {self.max_queue_cost} is below "
                f"--max-request-cost ({self.max_request_cost})"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"--log-level: {self.log_level!r} is not DEBUG, INFO, WARNING or ERROR"
            )
        return self


def _check_tls_pair(cert_file, key_file):
    """The certificate chain and key must load and belong together; gRPC itself would only say
    "Failed to bind to address"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ConfigError(
            f"TLS: cannot use cert file (GRPC_CERT_FILE) {cert_file!r} with key file "
            f"(GRPC_KEY_FILE) {key_file!r}: {e.strerror or e}"
        ) from None


def parse_float(text, source):
    try:
        return float(text.strip())
    except ValueError:
        raise ConfigError(f"{source}: {text!r} is not a number") from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text, source):
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{source}: {text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def parse_int(text, source):
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{source}: {text!r} is not an integer") from None


# (config field, environment variable, parser)
ENV_VARS = [
    ("port", "GRPC_PORT", parse_int),
    ("http_port", "SDCORE_HTTP_PORT", parse_int),
    ("max_workers", "GRPC_MAX_WORKERS", parse_int),
    ("max_message_size", "GRPC_MAX_MESSAGE_SIZE", parse_int),
    ("max_concurrent_rpcs", "GRPC_MAX_CONCURRENT_RPCS", parse_int),
    ("enable_reflection", "GRPC_ENABLE_REFLECTION", parse_bool),
    ("require_api_key", "GRPC_REQUIRE_API_KEY", parse_bool),
    ("api_key", "GRPC_API_KEY", lambda text, source: text),
    ("use_tls", "GRPC_USE_TLS", parse_bool),
    ("cert_file", "GRPC_CERT_FILE", lambda text, source: text),
    ("key_file", "GRPC_KEY_FILE", lambda text, source: text),
    ("max_request_cost", "SDCORE_MAX_REQUEST_COST", parse_float),
    ("max_queue_cost", "SDCORE_MAX_QUEUE_COST", parse_float),
    ("grace_period", "SDCORE_GRACE_PERIOD", parse_float),
]


def add_arguments(parser):
    """The `sdcore serve` flags. Every default is None so that unset flags fall back to env."""
    g = parser.add_argument_group("server")
    g.add_argument("--host", help="address to bind (default [::], every interface)")
    g.add_argument("--port", type=int, help=f"gRPC port (env GRPC_PORT, default {DEFAULT_PORT})")
    g.add_argument(
        "--http-port",
        type=int,
        help="also serve the HTTP APIs on this port (env SDCORE_HTTP_PORT; 0 = off, the default)",
    )
    g.add_argument(
        "--model", help="checkpoint file or diffusers folder (default: the shipped model)"
    )
    g.add_argument("--device", help="cpu or cuda (default cpu)")
    g.add_argument("--max-workers", type=int, help="engine threads (env GRPC_MAX_WORKERS)")
    g.add_argument(
        "--max-message-size",
        type=int,
        help="largest message in bytes (env GRPC_MAX_MESSAGE_SIZE, default 64 MiB)",
    )
    g.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="RPCs gRPC lets in at once (env GRPC_MAX_CONCURRENT_RPCS)",
    )
    g.add_argument(
        "--reflection",
        dest="enable_reflection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="server reflection (env GRPC_ENABLE_REFLECTION, default on)",
    )
    g.add_argument(
        "--require-api-key",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reject calls without a matching x-api-key (env GRPC_REQUIRE_API_KEY; default: on "
        "exactly when a key is set)",
    )
    g.add_argument("--api-key", help="the key; setting one turns checking on (env GRPC_API_KEY)")
    g.add_argument(
        "--tls",
        dest="use_tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve TLS (env GRPC_USE_TLS)",
    )
    g.add_argument("--cert-file", help="PEM certificate chain (env GRPC_CERT_FILE)")
    g.add_argument("--key-file", help="PEM private key (env GRPC_KEY_FILE)")
    g = parser.add_argument_group("queue")
    g.add_argument("--queue-size", type=int, help="jobs that may wait; more get RESOURCE_EXHAUSTED")
    g.add_argument(
        "--max-batch-size", type=int, help="images in one engine call (default 4; 1 = no batching)"
    )
    g.add_argument(
        "--batch-wait-ms",
        type=float,
        help="how long an idle engine waits for compatible requests (default 0)",
    )
    g.add_argument("--default-steps", type=int, help="steps when a request gives none (20)")
    g.add_argument("--max-steps", type=int, help="most steps a request may ask for (150)")
    g.add_argument(
        "--max-images", dest="max_images_per_request", type=int, help="most images per request (8)"
    )
    g.add_argument(
        "--max-request-cost",
        type=float,
        help="most work one request may ask for: width*height*steps*images in units of 2^20 "
        "pixel-steps (env SDCORE_MAX_REQUEST_COST; default 32 on cpu, 1024 on cuda)",
    )
    g.add_argument(
        "--max-queue-cost",
        type=float,
        help="most work waiting in the queue, same unit (env SDCORE_MAX_QUEUE_COST; default 8 "
        "requests of the largest cost)",
    )
    g.add_argument(
        "--grace-period",
        type=float,
        help="seconds in-flight work gets on SIGTERM before it is answered UNAVAILABLE and the "
        "process exits (env SDCORE_GRACE_PERIOD, default 10)",
    )
    g = parser.add_argument_group("observability")
    g.add_argument("--metrics-port", type=int, help="Prometheus metrics HTTP port (0 = off)")
    g.add_argument("--metrics-host", help="address the metrics endpoint binds (default: --host)")
    g.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    g.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON lines on stderr (default on)",
    )
    return parser


def from_args(args, environ=None):
    """A checked ServerConfig from parsed flags (add_arguments) and the environment."""
    environ = os.environ if environ is None else environ
    config = ServerConfig()
    for field, var, parse in ENV_VARS:
        text = environ.get(var)
        if text is not None and text != "":
            setattr(config, field, parse(text, var))
    for field in dataclasses.fields(ServerConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            setattr(config, field.name, value)
    return config.check()
