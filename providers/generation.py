"""The one create -> poll -> download flow of the video providers (Sync, Higgsfield, HeyGen).

    stored id?  yes: resume polling it (a retried job never pays twice)
                no:  create once (uploads first), store the id at once
    poll        until terminal, under the provider's deadline; unknown statuses keep polling
    download    to our storage immediately (signed URLs expire); 403/404 re-queries once
    check       the file must be a readable video

The create call is never retried after it was sent (see `_retry`); providers with idempotency
keys resend the same key on the job's next attempt, Higgsfield (none) records OUTCOME_UNKNOWN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from providers import media
from providers._retry import CallLog, CreateOutcomeUnknown, Deadline, GenerationState, GenerationStatus, poll_job
from providers.base import OUTCOME_UNKNOWN, GenerationStore, ProviderError, RemoteVideo
from providers.http import ProviderHttp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationFlow:
    http: ProviderHttp
    store: GenerationStore
    #: True when the provider dedupes creates by Idempotency-Key (Sync, HeyGen v3).
    idempotent_create: bool

    def run(self, *, video_id: str, out_path: Path,
            create: Callable[[Deadline, CallLog], str],
            fetch: Callable[[str, Deadline, CallLog], GenerationStatus],
            should_stop: Callable[[], bool] | None = None) -> RemoteVideo:
        """`should_stop` (a drain): polling ends with Cancelled; the stored id lets the requeued
        job resume this generation."""
        http, name = self.http, self.http.name
        deadline, calls = Deadline(http.limits.deadline_s), CallLog()
        with http.guard(deadline):
            generation_id = self.store.get(video_id, name)
            if generation_id == OUTCOME_UNKNOWN:
                raise ProviderError("create_outcome_unknown", f"an earlier attempt's {name} create call has an "
                                    "unknown outcome and the provider has no idempotency key; not creating "
                                    "another generation (it could be paid twice)", retryable=False,
                                    provider_fault=False)
            if generation_id:
                calls.add(f"resumed generation {generation_id}")
                log.info("%s: resuming generation %s", name, generation_id)
            else:
                try:
                    generation_id = create(deadline, calls)
                except CreateOutcomeUnknown:
                    if not self.idempotent_create:
                        self.store.put(video_id, name, OUTCOME_UNKNOWN)
                    raise
                self.store.put(video_id, name, generation_id)
                log.info("%s: created generation %s", name, generation_id)

            status = poll_job(lambda: fetch(generation_id, deadline, calls), provider=name,
                              generation_id=generation_id, deadline=deadline, base_s=http.limits.poll_base_s,
                              cap_s=http.limits.poll_cap_s, sleep=http.sleep, should_stop=should_stop)
            if status.state is GenerationState.failed:
                # Failed generations are kept: a retried job resumes this one and fails fast
                # instead of paying for another (one generation per job and provider).
                raise ProviderError(status.error_code or "generation_failed",
                                    f"generation {generation_id} {status.raw}: "
                                    f"{status.error or 'the provider gave no reason'}", retryable=False)
            if not status.output_url:
                raise ProviderError("provider_bad_output", f"generation {generation_id} completed without an "
                                    "output URL")

            def fresh_url() -> str | None:
                return fetch(generation_id, deadline, calls).output_url

            http.download(status.output_url, out_path, deadline=deadline, calls=calls, refresh=fresh_url)
            media.check_video(out_path, name)
        return RemoteVideo(out_path, name, generation_id, calls.note())
