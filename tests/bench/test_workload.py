"""Reading posts from UMT files, seeded image counts, and the per-mode replay of requests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.workload import Post, Replay, images_for, load_posts, read_umt_words

UMT = (
    "orphan\tO\nline\tO\n\n"  # words before any IMGID
    "IMGID:111\nKevin\tB-PER\nDurant\tI-PER\nwins\tO\n\n"
    "IMGID:222\n\t\nRT\tO\n@NBA\tO\ngame 7\tO\n\n"
    "IMGID:333\n\n\n"  # a post without words
    "IMGID:444\nspaced O\nB-LOC\n"  # whitespace-separated, then a tag whose word was lost
)


def write(tmp_path: Path, text: str = UMT) -> Path:
    path = tmp_path / "posts.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_read_umt_words_parses_posts_ids_and_odd_lines(tmp_path: Path) -> None:
    posts = read_umt_words(write(tmp_path))
    assert posts == [
        ("posts.txt:1", ["orphan", "line"]),
        ("111", ["Kevin", "Durant", "wins"]),
        ("222", ["RT", "@NBA", "game 7"]),  # a blank word line after IMGID does not end the post
        ("444", ["spaced"]),
    ]


def test_image_counts_are_in_range_deterministic_and_depend_on_the_seed() -> None:
    counts = [images_for(0, i, f"id{i}") for i in range(400)]
    assert counts == [images_for(0, i, f"id{i}") for i in range(400)]
    assert set(counts) == {1, 2, 3, 4}
    assert min(Counter(counts).values()) > 60  # roughly uniform
    assert counts != [images_for(1, i, f"id{i}") for i in range(400)]


def test_load_posts_keeps_file_order_and_limit(tmp_path: Path) -> None:
    posts = load_posts(write(tmp_path), seed=3, limit=2)
    assert [p.id for p in posts] == ["posts.txt:1", "111"]
    assert posts[1].text == "Kevin Durant wins"
    assert posts == load_posts(write(tmp_path), seed=3, limit=2)
    with pytest.raises(ValueError, match="no posts"):
        load_posts(write(tmp_path, "IMGID:1\n\n"))


def test_replay_gives_each_mode_its_own_cursor_and_fresh_urls() -> None:
    posts = [Post("a/b", ("Hi",), 2), Post("c", ("Yo", "there"), 1)]
    replay = Replay(posts, "http://cdn:1/", vision_budget_ms=700)
    text0, saver0, text1, text2 = (replay.next(m) for m in ("text", "saver", "text", "text"))
    assert (text0.index, saver0.index, text1.index, text2.index) == (0, 0, 1, 0)
    assert text2.pass_no == 1
    assert text0.body == {
        "text": "Hi",
        "image_urls": ["http://cdn:1/img/a_b/0.jpg?v=text-0", "http://cdn:1/img/a_b/1.jpg?v=text-0"],
        "options": {"vision": "never", "vision_budget_ms": 700},
    }
    assert saver0.body["options"]["vision"] == "auto"
    assert replay.next("always").body["options"]["vision"] == "always"
    # the same post's image in another mode or pass: another URL for the service, same path for the CDN
    urls = {text0.body["image_urls"][0], saver0.body["image_urls"][0], text2.body["image_urls"][0]}
    assert len(urls) == 3
    assert {u.split("?")[0] for u in urls} == {"http://cdn:1/img/a_b/0.jpg"}
