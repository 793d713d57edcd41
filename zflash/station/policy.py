"""The retry policy: only a lost link is tried again, and always with resume.

A refused package (bad signature 9012, no trusted key 9013, rollback 9015, storage 9023,
baseband 9040, unverifiable 9045, malformed 9004...) fails the same way every time, and a
slot that failed to boot (9031) must not be rewritten blindly: those end the job at once.
A lost link (9024) or a device that stopped answering (9025) is a cable or a hub; the next
attempt resumes where the device stopped (ZDL keeps the blocks that arrived).
"""

from __future__ import annotations

from dataclasses import dataclass

from zflash.errors import Code

RETRYABLE = frozenset({Code.LINK_LOST, Code.TIMEOUT})


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 0  #: further attempts after a lost link
    wait: float = 0.5  #: seconds between attempts (the device re-enumerates meanwhile)

    def should_retry(self, code: int, attempts_done: int, *, stopping: bool = False,
                     timed_out: bool = False) -> bool:
        """True when attempt ``attempts_done + 1`` should be made after failure ``code``."""
        if stopping or timed_out:
            return False
        return code in RETRYABLE and attempts_done <= self.retries
