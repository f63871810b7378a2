"""``python -m server [--flags]``: serve the model repository until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from server.app import Server
from server.config import load_config

log = logging.getLogger("server")


async def serve() -> None:
    try:
        config = load_config()
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        server = Server(config)
    except (ValueError, OSError) as error:  # a wrong option, repository or certificate: one line, no traceback
        sys.exit(f"python -m server: {error}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()
    log.info("stopped")


if __name__ == "__main__":
    asyncio.run(serve())
