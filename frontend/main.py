"""`sdcore demo`: the page, with the server started in this process or at --server.

`--server host:port` is a gRPC server; `--server http://host:port` (or https://) is a
server's HTTP API, which the page then uses instead (frontend/http_backend.py). Without
--server the page starts its own server and talks gRPC to it, or HTTP with --http."""

import asyncio
import os
import socket
import sys
import threading

from sdcore.service import DEFAULT_PORT

GRADIO_MISSING = (
    "sdcore demo: the demo page needs Gradio, which is not installed.\n"
    "Install it with:  pip install 'sdcore[demo]'   (or: pip install gradio)"
)


def add_arguments(parser):
    parser.add_argument(
        "--server",
        help=f"a running sdcore server: host:port for its gRPC API (e.g. localhost:"
        f"{DEFAULT_PORT}), or http://host:port or https://host:port for its HTTP API "
        "(sdcore serve --http-port); default: start one in this process",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address the page listens on")
    parser.add_argument("--port", type=int, default=7860, help="the page's HTTP port (7860)")
    g = parser.add_argument_group("the server started in this process (without --server)")
    g.add_argument("--model", help="checkpoint file or diffusers folder (default: shipped model)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument(
        "--grpc-port", type=int, default=0, help="its gRPC port on 127.0.0.1 (0: a free one)"
    )
    g.add_argument("--default-steps", type=int, default=20, help="steps when a request has none")
    g.add_argument(
        "--http",
        action="store_true",
        help="also serve the HTTP API, and have the page use it instead of gRPC",
    )
    g.add_argument(
        "--http-port",
        type=int,
        default=0,
        help="with --http: its port on 127.0.0.1 (0: a free one)",
    )
    g = parser.add_argument_group("connecting to --server")
    g.add_argument(
        "--api-key",
        default=os.environ.get("GRPC_API_KEY"),
        help="sent as metadata x-api-key over gRPC, as Authorization: Bearer over HTTP "
        "(default: env GRPC_API_KEY)",
    )
    g.add_argument("--tls", action="store_true", help="gRPC with TLS (over HTTP: an https URL)")
    g.add_argument("--ca-cert", help="PEM root certificate for TLS (default: system roots)")
    parser.add_argument("--title", default="sdcore", help="the page's title")
    return parser


class InProcessServer:
    """An SdcoreServer on its own event loop in a daemon thread, for the page to call."""

    def __init__(self, config):
        from sdcore.service.server import SdcoreServer

        self.loop = asyncio.new_event_loop()
        self.server = SdcoreServer(config)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _call(self, coro, timeout=None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self):
        """Listen, then load the model; a model that cannot load raises here."""
        self._thread.start()
        self._call(self.server.start(), 60)
        self._call(self.server.wait_ready())
        return self

    @property
    def address(self):
        return f"127.0.0.1:{self.server.port}"

    @property
    def http_url(self):
        """Its HTTP API, or None when it serves none."""
        return f"http://127.0.0.1:{self.server.http_port}" if self.server.http_port else None

    def stop(self, grace=2.0):
        try:
            self._call(self.server.stop(grace), 60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def start_server(args):
    from sdcore.service import logs
    from sdcore.service.config import ServerConfig

    config = ServerConfig(
        host="127.0.0.1",
        port=args.grpc_port,
        http_port=(args.http_port or free_port()) if args.http else 0,
        model=args.model,
        device=args.device,
        default_steps=args.default_steps,
        log_level="WARNING",
    ).check()
    logs.setup(config.log_level, config.log_json)
    return InProcessServer(config).start()


def free_port():
    """A port of 127.0.0.1 nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_http(server):
    return server.startswith(("http://", "https://"))


def server_problem(args):
    """The flag that cannot work with the others, as an error line; None when they fit."""
    if args.server and is_http(args.server):
        if args.tls:
            return "--tls: an HTTP server is reached with TLS by an https:// URL in --server"
        if args.ca_cert and not args.server.startswith("https://"):
            return "--ca-cert: only an https:// --server uses TLS"
        if args.http:
            return "--http: starts a server in this process; --server names one already running"
    elif args.server and "://" in args.server:
        return f"--server: {args.server!r}: host:port (gRPC), http:// or https:// (HTTP)"
    elif args.server and args.http:
        return "--http: starts a server in this process; --server names one already running"
    if args.http_port and not args.http:
        return "--http-port: only with --http"
    return None


def make_backend(address, args):
    """The page's way to the server at `address`: HTTP for an http(s) URL, else gRPC."""
    if is_http(address):
        from sdcore.frontend.http_backend import HttpBackend

        return HttpBackend(address, api_key=args.api_key, ca_cert=args.ca_cert)
    from sdcore.frontend.backend import Backend

    return Backend(address, api_key=args.api_key, tls=args.tls, ca_cert=args.ca_cert)


def run(args):
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(GRADIO_MISSING, file=sys.stderr)
        return 2
    from sdcore.frontend.app import CSS, build_app
    from sdcore.frontend.demo import Demo
    from sdcore.service.server import ListenError, bind_problem

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    problem = server_problem(args)
    if problem:
        print(f"sdcore demo: error: {problem}", file=sys.stderr)
        return 2
    problem = bind_problem(args.host, args.port)
    if problem:  # before the model loads, not after
        print(
            f"sdcore demo: error: --port: cannot listen on {args.host}:{args.port}: {problem}",
            file=sys.stderr,
        )
        return 2
    server = None
    if args.server:
        address = args.server
    else:
        print("sdcore demo: starting the gRPC server and loading the model...", file=sys.stderr)
        try:
            server = start_server(args)
        except ListenError as e:
            print(f"sdcore demo: error: --grpc-port: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # a config error or a model that cannot load: say which
            print(f"sdcore demo: cannot start the server: {e}", file=sys.stderr)
            return 1
        address = server.address
        print(f"sdcore demo: gRPC server on {address}", file=sys.stderr)
        if server.http_url:
            address = server.http_url
            print(f"sdcore demo: HTTP API on {address}, used by the page", file=sys.stderr)
    backend = make_backend(address, args)
    demo = Demo(backend)
    try:
        app = build_app(demo, title=args.title)
        print(f"sdcore demo: page on http://{args.host}:{args.port}", file=sys.stderr)
        app.queue().launch(
            server_name=args.host,
            server_port=args.port,
            css=CSS,
            ssr_mode=False,
            show_error=True,
            quiet=True,
        )
    except OSError as e:  # the page's port was taken after the check above
        print(f"sdcore demo: error: --port: {e}", file=sys.stderr)
        return 2
    finally:
        demo.close()
        backend.close()
        if server is not None:
            server.stop()
    return 0
