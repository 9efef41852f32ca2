"""Job events for SSE and WebSocket from one source: one watcher over the watched jobs' status files.

A single asyncio task stats the status.json of every job someone follows, every
`interval` seconds, in a worker thread; a changed file is read once and its event fanned
out to all of that job's subscribers. A new subscriber gets the current state at the next
scan, so nothing between its request and its first event is missed. However many clients
follow, the cost is one stat per followed job per interval: no loop per client.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from typing import Callable, NamedTuple

import anyio

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.outbox import read_status, status_path

TERMINAL_STATES = ("succeeded", "failed", "rejected")
_QUEUE_LIMIT = 256
FAN_OUT_SLICE = 50
"""Subscribers woken per event-loop turn: 500 streams woken at once would hold the loop for
tens of ms, and every request in flight with it."""


class JobEvent(NamedTuple):
    """A job's status as an event, with its Server-Sent Events message encoded once for all subscribers."""

    document: dict
    sse: bytes


def job_event(document: dict) -> JobEvent:
    sse = f"event: {document['state']}\ndata: {json.dumps(document, sort_keys=True)}\n\n".encode()
    return JobEvent(document, sse)


class Subscription:
    """One client's events of one job; the oldest are dropped if it falls 256 events behind."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(_QUEUE_LIMIT)

    def push(self, event: JobEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def events(self):
        """Events until (and including) the first terminal one."""
        while True:
            event = await self.queue.get()
            yield event
            if event.document.get("state") in TERMINAL_STATES:
                return


class StatusWatcher:
    """Fans status changes out to subscribers; `describe` turns a status document into an event."""

    def __init__(self, home: OrfeasHome, describe: Callable[[dict], dict], interval: float = 0.15):
        self.home = home
        self.describe = describe
        self.interval = interval
        self._subscribers: dict[str, set[Subscription]] = defaultdict(set)
        self._fresh: set[Subscription] = set()
        self._seen: dict[str, tuple[int, int]] = {}

    def subscribe(self, job_id: str) -> Subscription:
        subscription = Subscription(job_id)
        self._subscribers[job_id].add(subscription)
        self._fresh.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._fresh.discard(subscription)
        subscribers = self._subscribers.get(subscription.job_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.job_id]
                self._seen.pop(subscription.job_id, None)

    @property
    def subscriber_count(self) -> int:
        return sum(len(subscribers) for subscribers in self._subscribers.values())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._subscribers:
                await self.scan()

    async def scan(self) -> None:
        fresh_jobs = {subscription.job_id for subscription in self._fresh}
        fresh, self._fresh = self._fresh, set()
        events = await anyio.to_thread.run_sync(self._changed_events, list(self._subscribers), fresh_jobs)
        pushed = 0
        for job_id, (event, changed) in events.items():
            for subscription in list(self._subscribers.get(job_id, ())):
                if changed or subscription in fresh:
                    subscription.push(event)
                    self._fresh.discard(subscription)
                    pushed += 1
                    if pushed % FAN_OUT_SLICE == 0:
                        await asyncio.sleep(0)

    def _changed_events(self, job_ids: list[str], fresh_jobs: set[str]) -> dict[str, tuple[JobEvent, bool]]:
        """(event, changed since the last scan) for each job that changed or has a new subscriber."""
        events = {}
        for job_id in job_ids:
            try:
                info = os.stat(status_path(self.home, job_id))
            except FileNotFoundError:
                continue
            signature = (info.st_mtime_ns, info.st_size)
            changed = self._seen.get(job_id) != signature
            if not changed and job_id not in fresh_jobs:
                continue
            status = read_status(self.home, job_id)
            if status is None:
                continue
            self._seen[job_id] = signature
            events[job_id] = (job_event(self.describe(status)), changed)
        return events
