"""The API follows its model folder: a new checkpoint's item index is swapped in live.

The worker hot-reloads a new checkpoint from ``INTEREST_MODEL_DIR``
(``streams.reencode.Reencoder.maybe_reload``) and re-encodes its users with it;
the API must then rank those users' new vectors against the new item vectors.
:class:`ModelWatch` looks at the folder the item index was loaded from every
:data:`MODEL_POLL_S` seconds; when its ``config.json`` names another
``model_version`` it builds the new item index in a thread and swaps it in (the
user index's blend weight follows the new checkpoint). A checkpoint of another
dimension than the user index is refused (logged once): the replica must restart.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import anyio.to_thread

from interest_stream.api.state import ApiState
from interest_stream.core.checkpoint import checkpoint_version
from interest_stream.core.errors import InterestStreamError
from interest_stream.index.item_index import ItemIndex

__all__ = ["MODEL_POLL_S", "ModelWatch"]

logger = logging.getLogger(__name__)

MODEL_POLL_S = 2.0
"""Seconds between two looks at the model folder."""


class ModelWatch:
    """Swaps a new checkpoint's item index into ``state`` (hot reload of the API side)."""

    def __init__(self, state: ApiState, poll_s: float = MODEL_POLL_S) -> None:
        self.state = state
        self.poll_s = poll_s
        items = state.items
        source = None if items is None else items.source
        self.folder: Path | None = None if source is None else Path(source)
        self._logged: set[str] = set()
        self._refused: set[str] = set()
        self.swaps = 0

    async def run(self) -> None:
        """Poll until cancelled (a lifespan task); nothing to do without a model folder."""
        if self.folder is None:
            return
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.check()
            except Exception:  # the loop must survive anything; the next poll retries
                logger.exception("model folder check of %s failed", self.folder)

    async def check(self) -> bool:
        """Swap in the folder's checkpoint if its version differs; True if swapped."""
        current = self.state.items
        if self.folder is None or current is None:
            return False
        version = checkpoint_version(self.folder)
        if version is None or version == current.model_version or version in self._refused:
            return False
        try:
            folder, scan = self.folder, self.state.settings.item_scan
            new = await anyio.to_thread.run_sync(
                lambda: ItemIndex.from_checkpoint(folder, scan=scan)
            )
        except InterestStreamError as exc:
            self._report(version, "new checkpoint %s in %s cannot be loaded yet: %s",
                         version, self.folder, exc)  # fmt: skip
            return False
        users = self.state.users
        if users.dim is not None and new.dim != users.dim:
            self._refused.add(version)
            self._report(version, "checkpoint %s has dim %d, the user index %d: keeping model "
                         "%s; restart the API to serve it", new.model_version, new.dim,
                         users.dim, current.model_version)  # fmt: skip
            return False
        self.state.items = new
        users.blend_weight = new.blend_alpha
        users.model_version = new.model_version
        self.swaps += 1
        logger.info("model %s swapped in (was %s): %d items from %s",
                    new.model_version, current.model_version, new.count(), self.folder)  # fmt: skip
        return True

    def _report(self, version: str, msg: str, *args: object) -> None:
        """Log a problem with a checkpoint once per version (an unreadable one is retried)."""
        if version not in self._logged:
            logger.warning(msg, *args)
        self._logged.add(version)
