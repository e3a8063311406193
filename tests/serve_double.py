"""`python tests/serve_double.py [serve flags]`: the real server process (flags, environment,
signals, logs) around the engine double, for tests of process-level behaviour such as SIGTERM.
DOUBLE_STEP_SECONDS sets the double's time per step."""

import asyncio
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from engine_double import EngineDouble  # noqa: E402
from sdcore.service import config, logs, server  # noqa: E402


def main():
    args = server.build_parser().parse_args()
    try:
        cfg = config.from_args(args)
    except config.ConfigError as e:
        print(f"serve_double: error: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_json)
    engine = EngineDouble(step_seconds=float(os.environ.get("DOUBLE_STEP_SECONDS", "0.02")))
    return asyncio.run(server.serve(cfg, pipelines=[engine]))


if __name__ == "__main__":
    sys.exit(main())
