"""Readers of training/data on hand-written fixtures, and on ../shared/data when it is present."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from training.data.bio import bio_to_spans, spans_to_bio
from training.data.images import ImageStore
from training.data.readers import (
    PLACEHOLDER_TOKEN,
    attach_captions,
    attach_groundability,
    read_captions,
    read_groundability,
    read_manifest,
    read_mnre,
    read_rel2id,
    read_umt,
)
from training.data.records import MnerExample, MreExample

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


# --- UMT -----------------------------------------------------------------------------------------


def test_umt_reads_posts_tags_and_orphan_i_tags() -> None:
    posts = read_umt(FIXTURES / "umt_sample.txt", label_map={"OTHER": "MISC"})
    assert [p.id for p in posts] == ["101", "102", "103"]  # the last post has no final blank line
    assert [p.images for p in posts] == [["101.jpg"], ["102.jpg"], ["103.jpg"]]
    first = posts[0]
    assert first.tokens[3:5] == ["John", "Smith"]
    # "New" is an orphan I-LOC after O: it starts an entity (conlleval), it is not dropped.
    assert first.spans == [(3, 5, "PER"), (6, 8, "LOC"), (9, 10, "ORG"), (10, 12, "MISC")]
    # I-LOC right after B-MISC starts a new LOC entity.
    assert posts[1].spans == [(1, 2, "MISC"), (2, 3, "LOC")]


def test_umt_cleans_whitespace_and_keeps_blank_words_in_place() -> None:
    second = read_umt(FIXTURES / "umt_sample.txt")[1]
    assert second.tokens == ["The", "Big", "Apple", "shines", PLACEHOLDER_TOKEN]
    assert second.tags == ["O", "B-OTHER", "I-LOC", "O", "O"]  # no label map: OTHER stays


def test_umt_crlf_and_bom_give_the_same_posts(tmp_path: Path) -> None:
    text = (FIXTURES / "umt_sample.txt").read_text(encoding="utf-8")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    assert read_umt(crlf) == read_umt(FIXTURES / "umt_sample.txt")


def test_umt_rejects_a_bad_tag_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("IMGID:1\nfoo\tO\nbar\tS-PER\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:3"):
        read_umt(bad)


def test_umt_skips_posts_without_words(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("IMGID:1\n\nIMGID:2\nword\tB-PER\n", encoding="utf-8")
    posts = read_umt(path)
    assert [(p.id, p.tokens) for p in posts] == [("2", ["word"])]


# --- BIO round trip -------------------------------------------------------------------------------


def test_spans_to_bio_round_trips_and_rejects_overlaps() -> None:
    spans = [(0, 2, "PER"), (2, 3, "PER"), (5, 6, "LOC")]
    tags = spans_to_bio(6, spans)
    assert tags == ["B-PER", "I-PER", "B-PER", "O", "O", "B-LOC"]
    assert bio_to_spans(tags) == spans
    with pytest.raises(ValueError, match="overlaps"):
        spans_to_bio(4, [(0, 2, "PER"), (1, 3, "LOC")])
    with pytest.raises(ValueError):
        spans_to_bio(2, [(1, 3, "PER")])


# --- MNRE -------------------------------------------------------------------------------------------


def test_mnre_reads_python_literals() -> None:
    pairs = read_mnre(FIXTURES / "mnre_sample.txt")
    assert [p.id for p in pairs] == ["1:twitter_1.jpg", "3:twitter_1.jpg"]  # line numbers, blank skipped
    first, second = pairs
    assert first.tokens[2] == "O'Neil"
    assert (first.head, first.tail, first.relation) == ((0, 1), (4, 5), "/per/misc/present_in")
    assert (second.head, second.tail, second.relation) == ((2, 3), (0, 1), "None")
    assert first.images == ["twitter_1.jpg"]


def test_mnre_refuses_code_and_out_of_range_spans(tmp_path: Path) -> None:
    code = tmp_path / "code.txt"
    code.write_text("__import__('os').getcwd()\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a Python literal"):
        read_mnre(code)
    out_of_range = tmp_path / "range.txt"
    out_of_range.write_text(
        "{'token': ['a'], 'h': {'pos': [0, 1]}, 't': {'pos': [1, 3]}, 'img_id': 'x', 'relation': 'None'}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match=r"range\.txt:1"):
        read_mnre(out_of_range)


def test_rel2id_is_ordered_by_id(tmp_path: Path) -> None:
    labels = read_rel2id(FIXTURES / "rel2id_sample.json")
    assert labels == ["None", "/per/misc/present_in", "/per/org/member_of"]
    gap = tmp_path / "gap.json"
    gap.write_text('{"None": 0, "x": 2}', encoding="utf-8")
    with pytest.raises(ValueError, match="without gaps"):
        read_rel2id(gap)


# --- manifest ---------------------------------------------------------------------------------------


def test_manifest_detects_both_tasks_and_resolves_images(tmp_path: Path) -> None:
    examples = read_manifest(FIXTURES / "manifest_sample.jsonl", image_root=tmp_path, task=None)
    mner, mre, empty = examples
    assert isinstance(mner, MnerExample) and isinstance(mre, MreExample) and isinstance(empty, MnerExample)
    assert mner.tags == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert mner.images == [str(tmp_path / "a/1.jpg"), "https://example.org/x.jpg", "/abs/2.png"]
    assert mner.groundable == {(0, 1): True}  # the LOC entity carries no label: unknown, not False
    assert mner.captions == ["a footballer"]
    assert (mre.head, mre.tail, mre.relation, mre.images) == (
        (0, 1),
        (3, 5),
        "/per/org/member_of",
        [str(tmp_path / "b.jpg")],
    )
    assert empty.tags == ["O", "O"] and empty.spans == []


def test_manifest_without_root_keeps_paths_and_checks_the_task() -> None:
    mner = read_manifest(FIXTURES / "manifest_sample.jsonl", task=None)[0]
    assert mner.images[0] == "a/1.jpg"
    with pytest.raises(ValueError, match=r"manifest_sample\.jsonl:2"):
        read_manifest(FIXTURES / "manifest_sample.jsonl", task="mner")


def test_manifest_reports_bad_json_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "tokens": ["x"], "entities": []}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"m\.jsonl:2"):
        read_manifest(path)


# --- captions and groundability ---------------------------------------------------------------------


def test_captions_are_keyed_by_file_name_and_attached_by_name_or_stem() -> None:
    captions = read_captions(FIXTURES / "captions_sample.txt")
    assert captions == {
        "101.jpg": "a man in a suit : smiling",
        "102.jpg": "the big apple at night",
        "twitter_1.jpg": "two men shaking hands",
    }
    posts = attach_captions(read_umt(FIXTURES / "umt_sample.txt"), captions)
    assert [p.captions for p in posts] == [["a man in a suit : smiling"], ["the big apple at night"], []]
    bare = MnerExample(id="x", tokens=["a"], tags=["O"], images=["http://h/102?size=large"])
    assert attach_captions([bare], {"102.jpg": "night"})[0].captions == ["night"]
    pairs = attach_captions(read_mnre(FIXTURES / "mnre_sample.txt"), captions)
    assert all(p.captions == ["two men shaking hands"] for p in pairs)


def test_groundability_skips_unlabelled_rows_and_filters() -> None:
    path = FIXTURES / "groundability_sample.jsonl"
    table = read_groundability(path, dataset="twitter2015", split="train")
    assert table == {"101": {(3, 5): True, (6, 8): False}}  # UN (gmner null) is unknown, so absent
    assert set(read_groundability(path)) == {"101", "102", "17_06_1"}
    posts = attach_groundability(read_umt(FIXTURES / "umt_sample.txt"), table)
    assert posts[0].groundable == {(3, 5): True, (6, 8): False}
    assert posts[1].groundable == {}


# --- images -----------------------------------------------------------------------------------------


def test_image_store_resolves_ids_names_paths_and_mapping(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    Image.new("L", (4, 3), 128).save(tmp_path / "sub" / "1015799.jpg")
    Image.new("RGBA", (2, 2)).save(tmp_path / "top.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    store = ImageStore(tmp_path, mapping={"alias": "top.png", "https://h/x.png": tmp_path / "top.png"})
    expected = tmp_path / "sub" / "1015799.jpg"
    assert store.get("1015799") == expected
    assert store.get("1015799.jpg") == expected
    assert store.get("sub/1015799.jpg") == expected
    assert store.get(str(expected)) == expected
    assert store.get("alias") == tmp_path / "top.png"
    assert store.get("https://h/x.png") == tmp_path / "top.png"
    assert store.get("https://h/other.png") is None
    assert store.get("missing.jpg") is None and "missing.jpg" not in store
    image = store.load("1015799")
    assert image is not None and image.mode == "RGB" and image.size == (4, 3)
    assert store.load("broken.jpg") is None
    assert store.load("missing") is None


# --- the real benchmark files -----------------------------------------------------------------------

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder absent: {SHARED_DATA}")


def _orphan_i_tags(posts: list[MnerExample]) -> int:
    """I- tags that do not continue an entity of their type, the README's count."""
    count = 0
    for post in posts:
        previous = "O"
        for tag in post.tags:
            count += tag.startswith("I-") and previous[2:] != tag[2:]
            previous = tag
    return count


@pytest.mark.data
@needs_data
@pytest.mark.parametrize(
    ("dataset", "split", "posts", "orphans", "groundable", "not_groundable"),
    [
        ("twitter2015", "train", 4000, 186, 1535, 2237),
        ("twitter2015", "valid", 1000, 53, 403, 523),
        ("twitter2017", "train", 3373, 0, 2171, 2950),
        ("twitter2017", "valid", 723, 0, 462, 662),
    ],
)
def test_real_twitter_files(
    dataset: str, split: str, posts: int, orphans: int, groundable: int, not_groundable: int
) -> None:
    examples = read_umt(SHARED_DATA / "mner" / dataset / f"{split}.txt", label_map={"OTHER": "MISC"})
    assert len(examples) == posts
    assert len({e.id for e in examples}) == posts
    assert _orphan_i_tags(examples) == orphans
    assert Counter(t for e in examples for _, _, t in e.spans).keys() == {"PER", "LOC", "ORG", "MISC"}
    captions = read_captions(SHARED_DATA / "captions" / f"blip2_{dataset}.txt")
    assert all(e.captions for e in attach_captions(examples, captions))
    path = SHARED_DATA / "groundability" / "t15_t17_train_valid.jsonl"
    table = read_groundability(path, dataset=dataset, split=split)
    labelled = attach_groundability(examples, table)
    values = Counter(v for e in labelled for v in e.groundable.values())
    assert (values[True], values[False]) == (groundable, not_groundable)
    # Every labelled span is a gold entity under the conlleval convention.
    assert all(span in {(s, e) for s, e, _ in ex.spans} for ex in labelled for span in ex.groundable)


@pytest.mark.data
@needs_data
def test_real_mnre_files() -> None:
    labels = read_rel2id(SHARED_DATA / "mre" / "mnre" / "rel2id.json")
    assert len(labels) == 23 and labels[0] == "None" and "/per/per/alumi" in labels
    for name, size in (("mnre_train.txt", 12247), ("mnre_val.txt", 1624)):
        pairs = read_mnre(SHARED_DATA / "mre" / "mnre" / name)
        assert len(pairs) == size
        assert len({p.id for p in pairs}) == size
        assert {p.relation for p in pairs} <= set(labels)
    store = ImageStore(SHARED_DATA / "images")
    image = store.load("16_05_01_127")
    assert image is not None and image.mode == "RGB"
