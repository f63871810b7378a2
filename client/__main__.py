"""``python -m client {sentiment,forecast,translation,models,health} …``: the API from a terminal."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import grpc

from client.api import Client
from client.resume import Retry


def stdin_chunks() -> Iterator[str]:
    """Whatever arrives on stdin, as it arrives (a pipe or a terminal, line by line)."""
    while chunk := os.read(sys.stdin.fileno(), 4096):
        yield chunk.decode("utf-8", errors="replace")


def sentiment(client: Client, args: argparse.Namespace) -> None:
    chunks = iter([" ".join(args.text)]) if args.text else stdin_chunks()
    for update in client.stream_sentiment(chunks, model=args.model, token_every=args.token_every):
        bar = "#" * round(update.positive * 20)
        print(f"{update.position:4d}  {update.token:<16} P(positive)={update.positive:.4f}  {bar}", flush=True)


def forecast(client: Client, args: argparse.Namespace) -> None:
    history = [float(v) for v in args.history.split(",")]
    steps = client.forecast(history, args.horizon, args.quantiles or (), args.start_month, model=args.model)
    for index, step in enumerate(steps):
        if index == 0:
            print("step month        point  " + "  ".join(f"q{level:<9.2f}" for level in step.quantile_levels))
        print(f"{step.step:4d} {step.month:5d} {step.point:12.2f}  " + "  ".join(f"{q:10.2f}" for q in step.quantiles),
              flush=True)


def translate(client: Client, args: argparse.Namespace) -> None:
    tokens = client.translate_tokens(" ".join(args.text), beam=args.beam, model=args.model,
                                     resume_every=args.resume_every)
    for position, token in enumerate(tokens):
        if args.verbose:
            focus = max(range(len(token.attention)), key=token.attention.__getitem__)
            print(f"{token.piece!r:>16} id={token.token_id:<5} logp={token.log_prob:7.3f} attends to #{focus}",
                  flush=True)
        else:  # a leading space marks a word start; the first word needs none
            print(token.piece.lstrip() if position == 0 else token.piece, end="", flush=True)
    if not args.verbose:
        print()


def models(client: Client, args: argparse.Namespace) -> None:
    for info in client.list_models():
        print(f"{info.name}/{info.version}  {info.task:<12} {info.description}")


def reload(client: Client, args: argparse.Namespace) -> None:
    """Prints what the scan did; exits 1 if a version is refused (a deploy script's check)."""
    response = client.reload()
    for kind, refs in (("loaded", response.loaded), ("retired", response.retired)):
        for ref in refs:
            print(f"{kind} {ref.name}/{ref.version}")
    for refusal in response.refused:
        print(f"refused {refusal.folder}: {refusal.error}")
    if response.refused:
        sys.exit(1)


def health(client: Client, args: argparse.Namespace) -> None:
    """Prints the status; exits 1 unless SERVING (a container health check, a wait loop)."""
    status = client.health()
    print(status)
    if status != "SERVING":
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__)
    parser.add_argument("--server", default=os.environ.get("SEQSERVE_SERVER", "localhost:50051"))
    parser.add_argument("--timeout", type=float, help="seconds each call may take (default: no limit)")
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's certificate authorities")
    parser.add_argument("--ca", help="TLS, trusting this PEM bundle (the server's CA)")
    parser.add_argument("--cert", help="this client's PEM certificate chain, for a server that asks for one (mTLS)")
    parser.add_argument("--key", help="the key of --cert")
    parser.add_argument("--token", default=os.environ.get("SEQSERVE_TOKEN"),
                        help="bearer token sent with every call (default: $SEQSERVE_TOKEN)")
    parser.add_argument("--retries", type=int, default=5,
                        help="resume a stream that its server ended with a resume token up to this many times in a "
                             "row (0: never; docs/server.md, Resume tokens)")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("sentiment", help="running probability per token (text arguments or stdin)")
    p.add_argument("text", nargs="*")
    p.add_argument("--model", default="sentiment")
    p.add_argument("--token-every", type=int, default=0, help="ask for a resume token every this many chunks")
    p.set_defaults(run=sentiment)
    p = commands.add_parser("forecast", help="quantile forecasts of a series")
    p.add_argument("--history", required=True, help="comma-separated values, oldest first")
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--quantiles", type=float, nargs="*")
    p.add_argument("--start-month", type=int, default=1, help="month of year of the first value (1 = January)")
    p.add_argument("--model", default="forecast")
    p.set_defaults(run=forecast)
    p = commands.add_parser("translation", help="tokens as they are decoded")
    p.add_argument("text", nargs="+")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--resume-every", type=int, default=0, help="greedy: ask for a resume token every this many tokens")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per token: id, log-prob, attention")
    p.add_argument("--model", default="translation")
    p.set_defaults(run=translate)
    commands.add_parser("models", help="the loaded models").set_defaults(run=models)
    commands.add_parser("reload", help="hot reload: load new versions, retire removed ones; exit status 1 if one "
                        "is refused").set_defaults(run=reload)
    commands.add_parser("health", help="the server's health status; exit status 1 unless SERVING").set_defaults(
        run=health)
    args = parser.parse_args(argv)
    with Client(args.server, args.timeout, tls=args.tls, ca=args.ca, cert=args.cert, key=args.key,
                token=args.token, retry=Retry(attempts=args.retries)) as client:
        try:
            args.run(client, args)
        except grpc.RpcError as error:
            sys.exit(f"{error.code().name}: {error.details()}")


if __name__ == "__main__":
    main()
