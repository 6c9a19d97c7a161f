"""A bounded LRU cache of screened images keyed by URL.

Only the cheap screen summary is cached (SPEC §6): a repeated post skips fetching and screening its
images, and fetches again only the few the selector picks for detail encoding. Decoded images are not
cached because they are two orders of magnitude larger than a screen vector.
"""

from __future__ import annotations

from collections import OrderedDict

from model.pipeline import ScreenedImage


class ScreenCache:
    """Least-recently-used map URL -> ScreenedImage; used from the event loop thread only."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, ScreenedImage] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, url: str) -> ScreenedImage | None:
        item = self._items.get(url)
        if item is not None:
            self._items.move_to_end(url)
        return item

    def put(self, url: str, item: ScreenedImage) -> None:
        if self.max_entries <= 0:
            return
        self._items[url] = item
        self._items.move_to_end(url)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
