"""`sdcore demo`: the page, with the gRPC server started in this process or at --server."""

import asyncio
import os
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
        help=f"host:port of a running sdcore server (e.g. localhost:{DEFAULT_PORT}); "
        "default: start one in this process",
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
    g = parser.add_argument_group("connecting to --server")
    g.add_argument(
        "--api-key",
        default=os.environ.get("GRPC_API_KEY"),
        help="sent as metadata x-api-key (default: env GRPC_API_KEY)",
    )
    g.add_argument("--tls", action="store_true", help="connect with TLS")
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
        model=args.model,
        device=args.device,
        default_steps=args.default_steps,
        log_level="WARNING",
    ).check()
    logs.setup(config.log_level, config.log_json)
    return InProcessServer(config).start()


def run(args):
    try:
        import gradio  # noqa: F401
    except ImportError:
        print(GRADIO_MISSING, file=sys.stderr)
        return 2
    from sdcore.frontend.app import CSS, build_app
    from sdcore.frontend.backend import Backend
    from sdcore.frontend.demo import Demo
    from sdcore.service.server import ListenError, bind_problem

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
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
    backend = Backend(address, api_key=args.api_key, tls=args.tls, ca_cert=args.ca_cert)
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
