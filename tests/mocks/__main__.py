"""`python -m tests.mocks`: every provider mock on loopback, with the settings that point a node
at them; paste the printed lines into `.env` (or export them) and run `lipsync-node render`."""

from __future__ import annotations

import argparse
import signal
import threading

from tests.mocks import ElevenLabsMock, HeyGenMock, HiggsfieldMock, SyncMock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outcome", default="complete",
                        choices=["complete", "fail", "fail_silently", "stuck", "nsfw"],
                        help="how the video mocks' generations end")
    args = parser.parse_args()
    mocks = [ElevenLabsMock(), SyncMock(), HiggsfieldMock(), HeyGenMock()]
    for mock in mocks:
        mock.start()
        if hasattr(mock, "book"):
            mock.book.outcome = args.outcome
    el, sync, hf, hg = mocks
    print(f"ELEVENLABS_BASE_URL={el.url}\nELEVENLABS_API_KEY={el.api_key}")
    print(f"SYNCLABS_BASE_URL={sync.url}\nSYNCLABS_API_KEY={sync.api_key}")
    key_id, secret = hf.auth.removeprefix("Key ").split(":", 1)
    print(f"HIGGSFIELD_BASE_URL={hf.url}\nHIGGSFIELD_API_KEY_ID={key_id}\nHIGGSFIELD_API_KEY_SECRET={secret}")
    print(f"HEYGEN_BASE_URL={hg.url}\nHEYGEN_UPLOAD_URL={hg.url}\nHEYGEN_API_KEY={hg.api_key}")
    print("PROVIDER_POLL_BASE_S=0.2\nPROVIDER_POLL_CAP_S=1", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for mock in mocks:
        mock.stop()


if __name__ == "__main__":
    main()
