"""``python -m server [--flags]``: serve the model repository until SIGTERM or SIGINT (``--help``: every option)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from server import logs
from server.app import Server
from server.config import load_config

log = logging.getLogger("server")


async def serve() -> None:
    started = time.perf_counter()
    try:
        config = load_config()
        logs.configure(config.log_level, config.log_format)
        server = Server(config)
    except (ValueError, OSError) as error:  # a wrong option, repository or certificate: one line, no traceback
        sys.exit(f"python -m server: {error}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    for line in logs.summary(config, server.served):
        log.info(line)
    log.info("SERVING: configured, loaded and warmed up in %.1f s", time.perf_counter() - started)
    await stop.wait()
    await server.stop()
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(serve())
