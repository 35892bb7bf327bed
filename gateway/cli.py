"""vllm-gateway: run the gateway, or only validate its configuration file.

Exit status: 0 after a clean shutdown (SIGTERM or SIGINT) or a valid ``--check-config``;
2 for an invalid configuration (every error listed on stderr, each naming its option) or bad
arguments; 1 when the gateway could not start (a port in use, for instance).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, logs, systemd
from gateway.config import Config, ConfigError, load
from gateway.server import Gateway

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vllm-gateway",
        description="The gateway in front of vLLM workers: one pool per served model, least "
                    "outstanding requests under per-worker caps, a bounded FIFO queue (429 when "
                    "full, 503 on timeout), active health checks, SSE pass-through, and the six "
                    "gateway_* metrics on a separate port. See gateway/README.md.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE",
                        help="the YAML configuration file to run with")
    source.add_argument("--check-config", type=Path, metavar="FILE",
                        help="validate FILE and exit: 0 if valid, 2 listing every error")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"],
                   help="info logs one JSON line per request (default: info)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


async def serve(config: Config, log_level: str) -> int:
    logger, writer = logs.setup(log_level)
    try:
        gateway = Gateway(config, logger)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await gateway.start()
        except OSError as exc:
            logs.event(logger, "start_failed", logging.ERROR, error=str(exc))
            return EXIT_FAILED
        systemd.notify("READY=1")
        await stop.wait()
        systemd.notify("STOPPING=1")
        await gateway.shutdown()
        return EXIT_OK
    finally:
        writer.stop()  # flushes the log


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path: Path = args.check_config or args.config
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"vllm-gateway: {path}: invalid configuration, {len(exc.errors)} error(s):",
              file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"vllm-gateway: {path}: valid ({len(config.pools)} pool(s), "
              f"{sum(len(p.workers) for p in config.pools)} worker(s))")
        return EXIT_OK
    return asyncio.run(serve(config, args.log_level))
