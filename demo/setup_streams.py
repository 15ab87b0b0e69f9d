"""JetStream set-up shared by the simulated router and the runbook scripts.

There may be no ``nats`` CLI on the machine, so ``setup_nats_streams.sh`` and ``jetstream_purge.sh``
call this module (``python -m demo.setup_streams setup|purge|info``) and the router imports
:func:`ensure_stream_and_consumer` so that both create exactly the same stream and consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType
from nats.js.errors import NotFoundError

STREAM = "DECIDE"
SUBJECTS = ["router.decide.>"]
PUBLISH_SUBJECT = "router.decide.request"
CONSUMER = "router_decide_consumer"
# Redelivery of an unacked message after this long; the stall fault stops fetching altogether,
# so pending grows whatever this is.
ACK_WAIT_SECONDS = 30.0
MAX_ACK_PENDING = 1000


async def ensure_stream_and_consumer(js: JetStreamContext, request_timeout: float) -> None:
    """Create the stream and the durable pull consumer unless they exist (idempotent)."""
    try:
        await js.stream_info(STREAM)
    except NotFoundError:
        await js.add_stream(name=STREAM, subjects=SUBJECTS, storage=StorageType.FILE)
    try:
        await js.consumer_info(STREAM, CONSUMER, timeout=request_timeout)
    except NotFoundError:
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_SECONDS,
                max_ack_pending=MAX_ACK_PENDING,
            ),
            timeout=request_timeout,
        )


async def _run(args: argparse.Namespace) -> dict[str, object]:
    # allow_reconnect=False: a script should fail fast with a clear message, not retry forever.
    nc = await nats.connect(
        args.nats_url, connect_timeout=args.timeout, allow_reconnect=False, max_reconnect_attempts=0
    )
    try:
        js = nc.jetstream(timeout=args.timeout)
        if args.command == "setup":
            await ensure_stream_and_consumer(js, args.timeout)
            info = await js.consumer_info(STREAM, CONSUMER, timeout=args.timeout)
            return {"stream": STREAM, "subjects": SUBJECTS, "consumer": CONSUMER, "pending": info.num_pending}
        if args.command == "purge":
            before = (await js.stream_info(args.stream)).state.messages
            await js.purge_stream(args.stream)
            after = (await js.stream_info(args.stream)).state.messages
            return {"stream": args.stream, "purged": before - after, "messages": after}
        stream_info = await js.stream_info(STREAM)
        consumer_info = await js.consumer_info(STREAM, CONSUMER, timeout=args.timeout)
        return {
            "stream": STREAM,
            "messages": stream_info.state.messages,
            "consumer": CONSUMER,
            "pending": consumer_info.num_pending,
            "ack_pending": consumer_info.num_ack_pending,
        }
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.setup_streams", description=__doc__)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help=f"create stream {STREAM} and consumer {CONSUMER} if missing")
    purge = sub.add_parser("purge", help="delete every message of a stream (DANGER: data loss)")
    purge.add_argument("stream")
    sub.add_parser("info", help="stream message count and consumer pending")
    args = parser.parse_args(argv)
    try:
        # One overall deadline on top of the per-request timeouts.
        result = asyncio.run(asyncio.wait_for(_run(args), timeout=args.timeout * 4))
    except NotFoundError as exc:
        print(f"error: not found: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        print(f"error: NATS at {args.nats_url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
