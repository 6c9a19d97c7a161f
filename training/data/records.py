"""In-memory examples for the two tasks, independent of the file format they were read from."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.data.bio import Span, bio_to_spans


@dataclass
class MnerExample:
    """One post for multimodal NER; offsets are zero-based word offsets, end exclusive."""

    id: str  # post id (the UMT IMGID, or the manifest's id)
    tokens: list[str]  # words of the post
    tags: list[str]  # one BIO tag per word, e.g. B-PER, I-PER, O
    images: list[str] = field(default_factory=list)  # image references: file names, paths or URLs
    captions: list[str] = field(default_factory=list)  # text about the images (one per captioned image)
    groundable: dict[tuple[int, int], bool] = field(default_factory=dict)  # (start, end) -> has a box

    @property
    def post_key(self) -> str:
        """The post this example belongs to (dev splits keep a post's examples together)."""
        return self.id

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise ValueError(f"{self.id}: {len(self.tokens)} tokens but {len(self.tags)} tags")

    @property
    def spans(self) -> list[Span]:
        """Gold entities as (start, end_exclusive, type), conlleval convention for orphan `I-` tags."""
        return bio_to_spans(self.tags)


@dataclass
class MreExample:
    """One marked entity pair for multimodal relation extraction."""

    id: str  # unique id; for MNRE "<line number>:<img_id>" since img_ids repeat across pairs
    tokens: list[str]  # words of the post
    head: tuple[int, int]  # head entity (start, end_exclusive) in words
    tail: tuple[int, int]  # tail entity (start, end_exclusive) in words
    relation: str  # relation label; "None" is the negative class in MNRE
    images: list[str] = field(default_factory=list)  # image references: file names, paths or URLs
    captions: list[str] = field(default_factory=list)  # text about the images

    @property
    def post_key(self) -> str:
        """The post (image and sentence) this pair belongs to: one post carries several pairs, and dev
        splits must keep them together."""
        return "|".join(self.images) + "\x00" + " ".join(self.tokens)

    def __post_init__(self) -> None:
        for name, (start, end) in (("head", self.head), ("tail", self.tail)):
            if not 0 <= start < end <= len(self.tokens):
                raise ValueError(f"{self.id}: {name} ({start}, {end}) outside 0..{len(self.tokens)}")


Example = MnerExample | MreExample
