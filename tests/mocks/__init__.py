"""Loopback mock servers of the remote providers (ElevenLabs, Sync, Higgsfield, HeyGen v3).

Real HTTP on 127.0.0.1, following PROVIDERS.md section 6, with a switch for every fault the
clients must survive. `python -m tests.mocks` runs them all as a local dev stack.
"""

from tests.mocks._server import Fault, MockProvider, Reply, Request
from tests.mocks.elevenlabs import ElevenLabsMock
from tests.mocks.heygen import HeyGenMock
from tests.mocks.higgsfield import HiggsfieldMock
from tests.mocks.synclabs import SyncMock

__all__ = ["ElevenLabsMock", "Fault", "HeyGenMock", "HiggsfieldMock", "MockProvider", "Reply", "Request",
           "SyncMock"]
