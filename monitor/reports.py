"""Reports: trouble the user must hear about once, not once per step."""
from __future__ import annotations

import logging

_log = logging.getLogger("monitor")


class Reports:
    """Warns on the ``monitor`` logger the first time a kind of trouble happens, then stays quiet.

        reports = Reports()
        reports.once("closed", "a record was logged after close() and is dropped")
        reports.once("closed", "...")     # False: already said
    """

    def __init__(self) -> None:
        self.seen: set = set()

    def once(self, key: object, message: str) -> bool:
        """Logs ``monitor: <message> (reported once)`` unless ``key`` was reported; says whether it logged."""
        if key in self.seen:
            return False
        self.seen.add(key)
        _log.warning("monitor: %s (reported once)", message)
        return True
