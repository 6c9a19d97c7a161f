"""The replayed traffic: posts from a UMT file, each given 1–4 images, turned into ``POST /mner`` bodies.

Twitter-2015/2017 posts have one image each, and most of them are no longer online; the benchmark gives
every post a seeded number of images (1–4, as on a timeline where multi-photo posts are common) served by
the local CDN stand-in. Every mode replays the same posts in the same order from its own cursor, so the
modes see the same mix of texts however fast each one runs.

Image URLs carry a ``?v=<mode>-<pass>`` tag: within one mode and one pass over the file every URL is
new to the service, as a live timeline's posts are, and no mode profits from images another mode already
screened into the service's URL cache. The CDN ignores the tag and serves the post's usual bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# bench mode -> the request's options.vision
VISION_OF_MODE = {"text": "never", "always": "always", "saver": "auto"}
BATCH_SUFFIX = "_batch"  # ``text_batch``: the posts of ``text`` sent through the batch route


def vision_of(mode: str) -> str:
    return VISION_OF_MODE[mode.removesuffix(BATCH_SUFFIX)]


def is_batch(mode: str) -> bool:
    return mode.endswith(BATCH_SUFFIX)


@dataclass(frozen=True)
class Post:
    id: str  # the UMT IMGID (or file:line for posts without one)
    words: tuple[str, ...]
    n_images: int  # images this post carries in the benchmark (1..4)

    @property
    def text(self) -> str:
        return " ".join(self.words)


def read_umt_words(path: Path) -> list[tuple[str, list[str]]]:
    """(post id, words) per post of a UMT file: ``IMGID:<id>``, ``word<TAB>tag`` lines, blank separators.

    Only the words matter here; tags are ignored and posts without words are dropped.
    """
    posts: list[tuple[str, list[str]]] = []
    post_id: str | None = None
    words: list[str] = []
    start = 0

    def flush() -> None:
        if words:
            posts.append((post_id or f"{path.name}:{start}", list(words)))
        words.clear()

    for line_no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if line.startswith("IMGID:"):
            flush()
            post_id, start = line[len("IMGID:") :].strip(), line_no
        elif not line.strip():
            if words:  # a blank line right after an IMGID line does not end that post
                flush()
                post_id = None
        else:
            if not words and post_id is None:
                start = line_no
            if "\t" in line:
                word = line.rsplit("\t", 1)[0].strip()
            else:  # whitespace-separated; a lone field is a tag whose word was blank
                parts = line.rsplit(None, 1)
                word = parts[0].strip() if len(parts) == 2 else ""
            if word:
                words.append(word)
    flush()
    return posts


def images_for(seed: int, index: int, post_id: str, low: int = 1, high: int = 4) -> int:
    """The number of images of post ``index``: uniform on [low, high], fixed by the seed and the post."""
    return random.Random(f"{seed}:{index}:{post_id}").randint(low, high)


def load_posts(
    path: Path, seed: int = 0, limit: int | None = None, max_images: int = 4, min_images: int = 1
) -> list[Post]:
    """The posts of a UMT file in file order, each with its seeded image count."""
    raw = read_umt_words(path)[:limit]
    if not raw:
        raise ValueError(f"{path}: no posts with words")
    return [
        Post(post_id, tuple(words), images_for(seed, i, post_id, min_images, max_images))
        for i, (post_id, words) in enumerate(raw)
    ]


@dataclass(frozen=True)
class Request:
    mode: str
    index: int  # post index in the workload
    pass_no: int  # how many times this mode has gone through all posts before
    body: dict[str, Any]


class Replay:
    """Hands out the next request of each mode; each mode keeps its own cursor over the same posts."""

    def __init__(self, posts: list[Post], cdn_base: str, vision_budget_ms: int | None = None) -> None:
        if not posts:
            raise ValueError("no posts to replay")
        self.posts = posts
        self.cdn_base = cdn_base.rstrip("/")
        self.vision_budget_ms = vision_budget_ms
        self._cursor: dict[str, int] = {}

    def image_urls(self, index: int, mode: str, pass_no: int) -> list[str]:
        post = self.posts[index]
        key = _url_safe(post.id) or f"post{index}"
        return [f"{self.cdn_base}/img/{key}/{k}.jpg?v={mode}-{pass_no}" for k in range(post.n_images)]

    def next_batch(self, mode: str, size: int) -> Request:
        """``size`` next posts of ``mode`` as one batch body ``{"items": [...]}``."""
        posts = [self.next(mode).body for _ in range(size)]
        cursor = self._cursor[mode] - 1
        return Request(mode, cursor % len(self.posts), cursor // len(self.posts), {"items": posts})

    def next(self, mode: str) -> Request:
        cursor = self._cursor.get(mode, 0)
        self._cursor[mode] = cursor + 1
        index, pass_no = cursor % len(self.posts), cursor // len(self.posts)
        options: dict[str, Any] = {"vision": vision_of(mode)}
        if self.vision_budget_ms is not None:
            options["vision_budget_ms"] = self.vision_budget_ms
        body = {
            "text": self.posts[index].text,
            "image_urls": self.image_urls(index, mode, pass_no),
            "options": options,
        }
        return Request(mode, index, pass_no, body)


def _url_safe(post_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in post_id)
