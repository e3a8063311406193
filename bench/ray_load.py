"""Load test of sdcore as a Ray Serve application (service/ray_serve.py), with bench/load.py's
run_load: the same clients, through Serve's gRPC proxy.

    # a local Ray cluster of --cpus CPUs on 127.0.0.1; 1 engine replica, then 2, same load;
    # prints each and the ratio
    python bench/ray_load.py --replicas 1 2 --clients 8 --duration 30

    # also the single-process server (python -m sdcore.service) under the same load, as the peer
    python bench/ray_load.py --replicas 1 2 --compare-direct

    # against a proxy already serving the application (sdcore serve --ray-address ...)
    python bench/ray_load.py --server 127.0.0.1:50051

GetStatus answers from one replica, so the memory figures are one replica's.
"""

import argparse
import asyncio
import json
import os
import pathlib
import socket
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import StartedServer, report, run_load  # noqa: E402
from sdcore.service import config as config_mod  # noqa: E402
from sdcore.service.gen import sdcore_service_pb2 as pb  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", help="host:port of a Serve gRPC proxy already serving sdcore")
    p.add_argument(
        "--replicas", type=int, nargs="+", default=[1, 2], help="engine replicas, one run each"
    )
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local cluster")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per engine replica")
    p.add_argument("--model", help="checkpoint (default: the shipped model)")
    p.add_argument("--max-batch-size", type=int, default=4)
    p.add_argument("--queue-size", type=int, default=64)
    p.add_argument(
        "--compare-direct",
        action="store_true",
        help="also load the single-process server (python -m sdcore.service) the same way",
    )
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    p.add_argument("--prompt", default="a red circle on a blue background")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the statistics as JSON too")
    return p


def run_on_local_cluster(args, load):
    import ray
    from ray import serve
    from sdcore.service import ray_serve

    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    cfg = config_mod.ServerConfig(
        host="127.0.0.1",
        port=free_port(),
        model=args.model,
        max_batch_size=args.max_batch_size,
        queue_size=args.queue_size,
        log_level="WARNING",
    ).check()
    results = {}
    ray.init(
        address="local",
        num_cpus=args.cpus,
        _node_ip_address="127.0.0.1",
        _temp_dir=tempfile.mkdtemp(prefix="sdray-", dir="/tmp"),
        include_dashboard=False,
        log_to_driver=False,
    )
    try:
        for n in args.replicas:
            options = ray_serve.RayOptions(replicas=n, replica_cpus=args.replica_cpus).check()
            ray_serve.deploy(cfg, options, None, free_port())
            label = f"ray {n} replica{'s' if n > 1 else ''} x {args.replica_cpus:g} CPU"
            stats = load(f"127.0.0.1:{cfg.port}")
            report(label, stats)
            results[label] = stats
            serve.delete(ray_serve.APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    request = pb.GenerateRequest(
        prompt=args.prompt, steps=args.steps, width=args.width, height=args.height
    )

    def load(target):
        return asyncio.run(run_load(target, args.clients, args.duration, request))

    if args.server:
        results = {"run": load(args.server)}
        report(f"proxy {args.server}", results["run"])
    else:
        results = run_on_local_cluster(args, load)
        labels = list(results)
        for label in labels[1:]:
            ratio = results[label]["images_per_s"] / results[labels[0]]["images_per_s"]
            print(f"{label} / {labels[0]}: images/s x{ratio:.2f}")
    if args.compare_direct:
        extra = ["--max-batch-size", str(args.max_batch_size), "--queue-size"]
        extra += [str(args.queue_size), "--log-level", "WARNING"]
        if args.model:
            extra += ["--model", args.model]
        env = dict(os.environ)
        env.pop("GRPC_PORT", None)
        with StartedServer([sys.executable, "-m", "sdcore.service"], extra, env=env) as server:
            direct = load(server.target)
        report("single process", direct)
        for label, stats in results.items():
            ratio = stats["images_per_s"] / direct["images_per_s"]
            print(f"{label} / single process: images/s x{ratio:.2f}")
        results["single process"] = direct
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
