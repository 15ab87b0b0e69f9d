"""The floor for bench/intake: the least any receiver must do to keep the promise of a 200.

A new body is validated with the service's own model, written with the service's own statements
(a notification, each alert's occurrence UPSERT and its alert event) on the service's schema, and
answered once its commit is durable; commits are grouped as the service groups them (everything
queued while the loop turns, one COMMIT). A body seen before byte for byte is answered at once.
Nothing else: no checks of the store's file, no counts of re-sent deliveries, no metrics, no rules,
no dispatcher. What the real receiver reaches is bounded by what this reaches on the same host.

    .venv/bin/python bench/floor_server.py PORT STORE_PATH [full|normal]
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys

from aiohttp import web

from service.alerts.webhook import WebhookNotification, parse
from service.store.deliveries import INSERT_NOTIFICATION, UPSERT_OCCURRENCE, insert_event, notification_row
from service.store.remembered import body_digest, labels_json
from service.store.schema import migrate

RECEIVED = "2026-12-02T00:00:00.000000+00:00"  # one fixed time: formatting one is the service's glue


class Floor:
    def __init__(self, path: str, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        migrate(self.conn)
        self.seen: set[bytes] = set()
        self.pending: list[tuple[WebhookNotification, bytes, asyncio.Future[int]]] = []
        self.flushing: asyncio.Task[None] | None = None

    def insert(self, notification: WebhookNotification, body: bytes) -> int:
        conn = self.conn
        notification_id = conn.execute(INSERT_NOTIFICATION, notification_row(notification, body, RECEIVED)).lastrowid
        assert notification_id is not None
        for alert in notification.alerts:
            row = (
                alert.fingerprint,
                alert.startsAt.isoformat(),
                alert.labels.get("alertname", ""),
                labels_json(alert.labels).decode(),
                labels_json(alert.annotations).decode(),
                alert.generatorURL,
                alert.status,
                None,
                RECEIVED,
                RECEIVED,
                "webhook",
                0,
            )
            occurrence_id, previous_status, *_ = conn.execute(UPSERT_OCCURRENCE, row).fetchone()
            insert_event(conn, notification_id, occurrence_id, alert.status, previous_status, False, RECEIVED)
        return notification_id

    async def flush(self) -> None:
        try:
            while self.pending:
                await asyncio.sleep(0)  # the requests the loop is reading join this commit
                batch, self.pending = self.pending, []
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    ids = [self.insert(notification, body) for notification, body, _ in batch]
                    self.conn.execute("COMMIT")
                except sqlite3.Error as exc:  # the whole batch answers 500: none of it is committed
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    for _, _, future in batch:
                        future.set_exception(exc)
                    continue
                for (_, _, future), notification_id in zip(batch, ids, strict=True):
                    future.set_result(notification_id)
        finally:
            self.flushing = None

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        digest = body_digest(body)
        if digest in self.seen:
            return web.Response(body=b'{"status": "accepted"}', content_type="application/json")
        notification = parse(body)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append((notification, body, future))
        if self.flushing is None:
            self.flushing = asyncio.create_task(self.flush())
        notification_id = await future
        self.seen.add(digest)
        return web.Response(
            body=b'{"status": "accepted", "notification_id": %d}' % notification_id, content_type="application/json"
        )


def main() -> None:
    floor = Floor(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "full")
    app = web.Application()
    app.router.add_post("/hooks/alertmanager", floor.receive)
    app.router.add_get("/-/ready", lambda _request: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
