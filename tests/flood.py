"""A hostile StreamSentiment client, run as its own process by ``tests/test_abuse.py``.

``python tests/flood.py TARGET SECONDS RATE`` sends RATE chunks a second, each of 5,000 characters of
one endless word (RATE 1,000: 5 MB/s, or 7.5 MB, the amount that once stalled the server, in 1.5 s),
for SECONDS, then closes its side, reads every update and prints a JSON line: chunks and characters
sent, and the tokens that came back. The pace keeps this process from taking the CPU that the
server and the measuring client need on a small machine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import grpc

from protos.seqserve.v1 import common_pb2, sentiment_pb2, sentiment_pb2_grpc

CHUNK = "a" * 5000


def main(target: str, seconds: float, rate: float) -> None:
    sent = {"chunks": 0, "characters": 0}

    def chunks() -> Iterator[sentiment_pb2.SentimentChunk]:
        yield sentiment_pb2.SentimentChunk(model=common_pb2.ModelRef(name="sentiment"), text=CHUNK)
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            if sent["chunks"] > (now - start) * rate:
                time.sleep(0.01)
                continue
            yield sentiment_pb2.SentimentChunk(text=CHUNK)
            sent["chunks"] += 1
        yield sentiment_pb2.SentimentChunk(text=" the end")

    with grpc.insecure_channel(target) as channel:
        updates = sentiment_pb2_grpc.SentimentStub(channel).StreamSentiment(chunks(), timeout=seconds + 60)
        tokens = [update.token for update in updates]
    sent["characters"] = (sent["chunks"] + 1) * len(CHUNK)
    print(json.dumps({**sent, "tokens": tokens}))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
