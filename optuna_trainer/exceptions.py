"""The errors a search raises, in one place, so that users can catch them by class."""

from __future__ import annotations


class NoCompletedTrialError(RuntimeError):
    """Raised when a search ends without any completed trial (every one was pruned or failed)."""


class TrialOutOfMemoryError(RuntimeError):
    """One trial ran out of memory; with ``continue_on_oom`` the search catches it and goes on with the next trial."""


class ArtifactUploadError(RuntimeError):
    """A checkpoint could not be uploaded to the artifact store: that trial fails (its `fail_reason` says why) and the
    search goes on."""


class CoordinationError(RuntimeError):
    """The control group itself failed (a process crashed or hung): the search cannot go on on any rank."""


class PeerFailedError(RuntimeError):
    """This rank stopped because another rank failed or left the trial (the trial's error is the other rank's)."""


__all__ = [
    "ArtifactUploadError",
    "CoordinationError",
    "NoCompletedTrialError",
    "PeerFailedError",
    "TrialOutOfMemoryError",
]
