"""The generation state machine and signed outputs the three video mocks share.

A generation advances one state per status poll (deterministic, no timers): e.g. PENDING ->
PROCESSING -> COMPLETED. Switches on `JobBook`:

    outcome          "complete" | "fail" | "fail_silently" (no reason) | "stuck" | "nsfw"
    unknown_status   a status string the client has never seen, shown for one poll mid-way
    expire_first_url the first output URL of each generation answers 403 (expired signature);
                     re-reading the generation gives a fresh URL that works
    webhook          "once" | "duplicate" | "none": delivery to the URL given at create time
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.mocks import media
from tests.mocks._server import Reply, deliver_webhook


@dataclass
class MockGeneration:
    id: str
    request: dict[str, Any]
    webhook_url: str | None = None
    polls: int = 0
    sig: int = 0
    url_issued: bool = False
    notified: bool = False
    terminal: str | None = None  # set once reached, so later polls do not move it
    extra: dict[str, Any] = field(default_factory=dict)


class JobBook:
    def __init__(self, prefix: str, running: list[str], completed: str, failed: str):
        self.prefix, self.running, self.completed, self.failed = prefix, running, completed, failed
        self.jobs: dict[str, MockGeneration] = {}
        self.outcome = "complete"
        self.unknown_status: str | None = None
        self.expire_first_url = False
        self.webhook = "once"
        self.expired: set[tuple[str, int]] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def create(self, request: dict, webhook_url: str | None = None) -> MockGeneration:
        with self._lock:
            gen = MockGeneration(f"{self.prefix}{next(self._ids):04d}", request, webhook_url)
            self.jobs[gen.id] = gen
            return gen

    @property
    def created(self) -> int:
        return len(self.jobs)

    def active(self) -> int:
        return sum(1 for g in self.jobs.values() if g.terminal is None)

    def poll(self, gen: MockGeneration) -> str:
        """The status after one more poll."""
        with self._lock:
            if gen.terminal:
                return gen.terminal
            gen.polls += 1
            states = list(self.running)
            if self.unknown_status:
                states.insert(1, self.unknown_status)
            if self.outcome == "stuck":
                return states[0]
            if gen.polls <= len(states):
                return states[gen.polls - 1]
            gen.terminal = {"complete": self.completed, "nsfw": "nsfw"}.get(self.outcome, self.failed)
            return gen.terminal

    def output_url(self, base_url: str, gen: MockGeneration) -> str:
        """A signed-looking URL; re-reading after an expiry gives a fresh signature."""
        with self._lock:
            if (gen.id, gen.sig) in self.expired:
                gen.sig += 1
            if self.expire_first_url and not gen.url_issued:
                self.expired.add((gen.id, gen.sig))
            gen.url_issued = True
            return f"{base_url}/outputs/{gen.id}.mp4?X-Amz-Signature=sig{gen.sig}&X-Amz-Expires=3600"

    def serve_output(self, path: str, query: dict[str, str]) -> Reply:
        gen_id = path.rsplit("/", 1)[-1].removesuffix(".mp4")
        sig = query.get("X-Amz-Signature", "")
        gen = self.jobs.get(gen_id)
        if gen is None or gen.terminal != self.completed:
            return Reply(404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        if (gen_id, int(sig.removeprefix("sig") or -1)) in self.expired:
            return Reply(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                         content_type="application/xml")
        return Reply(200, media.mp4_bytes(), content_type="video/mp4")

    def notify(self, gen: MockGeneration, payload: dict) -> None:
        """Deliver the terminal webhook once per generation (or twice, or never)."""
        with self._lock:
            if gen.notified or not gen.webhook_url:
                return
            gen.notified = True
        deliver_webhook(gen.webhook_url, payload, self.webhook)
