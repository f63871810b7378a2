"""``python -m server [--flags]``: serve the model repository until SIGTERM or SIGINT (``--help``: every option)."""

from __future__ import annotations

import asyncio
import sys

from server import logs
from server.app import serve
from server.config import load_config
from server.workers import supervise


def main() -> None:
    try:
        config = load_config()
    except (ValueError, OSError) as error:  # a wrong option or config file: one line, no traceback
        sys.exit(f"python -m server: {error}")
    logs.configure(config.log_level, config.log_format)
    if config.workers > 1:
        sys.exit(supervise(config))
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
