"""Readers for the benchmark files (UMT, MNRE) and the JSONL manifest of SPEC §7, plus side tables.

Conventions shared by every reader:
- offsets are zero-based word offsets with an exclusive end;
- files are UTF-8 (a BOM is ignored); CRLF and trailing whitespace are tolerated;
- malformed content raises ValueError naming the file and line, rather than being silently skipped;
- words that are empty or whitespace-only (Twitter-2015 valid has a lone U+00A0) are replaced by
  `PLACEHOLDER_TOKEN`, keeping every word position so offsets in side tables stay aligned, while
  sub-word tokenizers, which would give such a word no piece at all, still see one.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar, overload

from training.data.bio import Span, spans_to_bio, split_tag
from training.data.images import ImageStore, is_url
from training.data.records import Example, MnerExample, MreExample

logger = logging.getLogger(__name__)

__all__ = [
    "PLACEHOLDER_TOKEN",
    "GroundabilityTable",
    "ImageStore",
    "attach_captions",
    "attach_groundability",
    "read_captions",
    "read_groundability",
    "read_manifest",
    "read_mnre",
    "read_rel2id",
    "read_umt",
]

PLACEHOLDER_TOKEN = "_"

# post id -> (start, end) -> groundable
GroundabilityTable = dict[str, dict[tuple[int, int], bool]]

E = TypeVar("E", MnerExample, MreExample)

_CAPTION_LINE = re.compile(r"^\s*(\S+)\s+:(.*)$")  # "<IMGID>.jpg :<caption>"
_CAPTION_LINE_LOOSE = re.compile(r"^\s*([^:\s]+)\s*:(.*)$")  # same without the space before ':'


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line break); universal newlines handle CRLF."""
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            yield line_no, line.rstrip("\r\n")


def _clean_token(token: str) -> str:
    token = token.strip()
    return token if token else PLACEHOLDER_TOKEN


def read_umt(path: str | Path, label_map: Mapping[str, str] | None = None) -> list[MnerExample]:
    """Twitter-2015/2017 in the UMT release: `IMGID:<id>`, `token<TAB>tag` lines, blank line between posts.

    `label_map` renames entity types, e.g. {"OTHER": "MISC"} to align Twitter-2015 with Twitter-2017.
    The example id is the IMGID and its one image is `<IMGID>.jpg`. Posts with no words are skipped;
    words before any IMGID line form posts with the id `<file name>:<line>` and no image.
    """
    path = Path(path)
    label_map = dict(label_map or {})
    examples: list[MnerExample] = []
    post_id: str | None = None
    first_line = 0
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            images = [f"{post_id}.jpg"] if post_id is not None else []
            examples.append(
                MnerExample(
                    id=post_id or f"{path.name}:{first_line}",
                    tokens=list(tokens),
                    tags=list(tags),
                    images=images,
                )
            )
        elif post_id is not None:
            logger.warning("%s: post %s has no words; skipped", path, post_id)
        tokens.clear()
        tags.clear()

    for line_no, raw in _lines(path):
        line = raw.rstrip()
        if line.startswith("IMGID:"):
            flush()
            post_id, first_line = line[len("IMGID:") :].strip(), line_no
            continue
        if not line.strip():
            if tokens:
                flush()
                post_id = None
            continue
        if not tokens and post_id is None:
            first_line = line_no
        token, tag = _split_word_line(line, path, line_no)
        try:
            prefix, entity_type = split_tag(tag)
        except ValueError as exc:
            raise ValueError(f"{path}:{line_no}: {exc}") from None
        tokens.append(_clean_token(token))
        tags.append(tag if prefix == "O" else f"{prefix}-{label_map.get(entity_type, entity_type)}")
    flush()
    logger.info("%s: %d posts", path, len(examples))
    return examples


def _split_word_line(line: str, path: Path, line_no: int) -> tuple[str, str]:
    """(word, tag) of a `word<TAB>tag` line; whitespace-separated lines are accepted too."""
    if "\t" in line:
        token, tag = line.rsplit("\t", 1)
        return token, tag.strip()
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        return parts[0], parts[1]
    # A lone field is a tag whose word was blank (the separator was swallowed as whitespace).
    try:
        split_tag(parts[0])
    except ValueError:
        raise ValueError(f"{path}:{line_no}: expected 'word<TAB>tag', got {line!r}") from None
    return "", parts[0]


def _span(value: Any, what: str, where: str) -> tuple[int, int]:
    try:
        start, end = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} must be [start, end], got {value!r}") from None
    return start, end


def read_mnre(path: str | Path) -> list[MreExample]:
    """MNRE: one Python dict literal per line with `token`, `h`/`t` {name, pos}, `img_id`, `relation`.

    Parsed with `ast.literal_eval` (the files use Python quoting, so JSON fails; `eval` would run code).
    The id is `<line number>:<img_id>`, because one image and sentence carry several entity pairs.
    """
    path = Path(path)
    examples: list[MreExample] = []
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"{where}: not a Python literal ({exc.__class__.__name__})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a dict, got {type(record).__name__}")
        try:
            img_id = str(record["img_id"])
            examples.append(
                MreExample(
                    id=f"{line_no}:{img_id}",
                    tokens=[_clean_token(str(t)) for t in record["token"]],
                    head=_span(record["h"]["pos"], "h.pos", where),
                    tail=_span(record["t"]["pos"], "t.pos", where),
                    relation=str(record["relation"]),
                    images=[img_id],
                )
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: missing or malformed field {exc}") from None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    logger.info("%s: %d pairs", path, len(examples))
    return examples


def _detect_task(obj: Mapping[str, Any]) -> Literal["mner", "mre"]:
    if "relation" in obj or "head" in obj or "tail" in obj:
        return "mre"
    if "entities" in obj:
        return "mner"
    raise ValueError("cannot tell the task: need 'entities' (MNER) or 'head'/'tail'/'relation' (MRE)")


def _task_of(obj: Mapping[str, Any], task: Literal["mner", "mre"] | None) -> Literal["mner", "mre"]:
    """The task of one manifest object; an explicit task must not contradict the object's fields."""
    if task is None:
        return _detect_task(obj)
    other = "entities" in obj if task == "mre" else any(key in obj for key in ("head", "tail", "relation"))
    if other:
        raise ValueError(f"object has fields of the other task than {task!r}")
    return task


def _resolve_image(ref: str, image_root: Path | None) -> str:
    if image_root is None or is_url(ref) or Path(ref).is_absolute():
        return ref
    return str(image_root / ref)


@overload
def read_manifest(
    path: str | Path, image_root: str | Path | None = ..., *, task: Literal["mner"]
) -> list[MnerExample]: ...
@overload
def read_manifest(
    path: str | Path, image_root: str | Path | None = ..., *, task: Literal["mre"]
) -> list[MreExample]: ...
@overload
def read_manifest(
    path: str | Path, image_root: str | Path | None = ..., task: None = ...
) -> list[Example]: ...
def read_manifest(
    path: str | Path, image_root: str | Path | None = None, task: Literal["mner", "mre"] | None = None
) -> Sequence[Example]:
    """The JSONL manifest of SPEC §7, one post per line, zero-based word offsets with exclusive ends.

    MNER: `{"id", "tokens", "images", "entities": [{"start", "end", "type", "groundable"?}]}`;
    MRE: `{"id", "tokens", "images", "head": [s, e], "tail": [s, e], "relation"}`. Both may carry
    `captions` (list of strings). `task=None` detects the task per line (a mixed file gives both kinds).
    Relative image paths are joined to `image_root` when it is given and left untouched otherwise;
    URLs and absolute paths are never changed. A missing `id` becomes the line number.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else None
    examples: list[Example] = []
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            examples.append(_manifest_example(obj, _task_of(obj, task), root, str(line_no)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: missing or malformed field {exc}") from None
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{where}: {exc}") from None
    logger.info("%s: %d examples", path, len(examples))
    return examples


def _manifest_example(
    obj: Mapping[str, Any], task: Literal["mner", "mre"], root: Path | None, default_id: str
) -> Example:
    post_id = str(obj.get("id", default_id))
    tokens = [_clean_token(str(t)) for t in obj["tokens"]]
    images = [_resolve_image(str(ref), root) for ref in obj.get("images") or []]
    captions = [str(c) for c in obj.get("captions") or []]
    if task == "mre":
        return MreExample(
            id=post_id,
            tokens=tokens,
            head=_span(obj["head"], "head", post_id),
            tail=_span(obj["tail"], "tail", post_id),
            relation=str(obj["relation"]),
            images=images,
            captions=captions,
        )
    spans: list[Span] = []
    groundable: dict[tuple[int, int], bool] = {}
    for entity in obj.get("entities") or []:
        start, end = int(entity["start"]), int(entity["end"])
        spans.append((start, end, str(entity["type"])))
        if entity.get("groundable") is not None:
            groundable[(start, end)] = bool(entity["groundable"])
    return MnerExample(
        id=post_id,
        tokens=tokens,
        tags=spans_to_bio(len(tokens), spans),
        images=images,
        captions=captions,
        groundable=groundable,
    )


def read_captions(path: str | Path) -> dict[str, str]:
    """Captions keyed by image file name exactly as written (`1015799.jpg`), from `<name> :<caption>` lines.

    Keys keep the extension because examples refer to images by file name (UMT `<IMGID>.jpg`, MNRE
    `img_id`); `attach_captions` also matches by stem, so bare ids work too. Later lines win on repeats.
    """
    path = Path(path)
    captions: dict[str, str] = {}
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        match = _CAPTION_LINE.match(line) or _CAPTION_LINE_LOOSE.match(line)
        if match is None:
            raise ValueError(f"{path}:{line_no}: expected '<image> :<caption>', got {line!r}")
        captions[match.group(1)] = match.group(2).strip()
    logger.info("%s: %d captions", path, len(captions))
    return captions


def attach_captions(examples: Sequence[E], captions: Mapping[str, str]) -> list[E]:
    """Copies of the examples whose `captions` hold the caption of each of their images that has one.

    Images are matched by file name (URL query strings ignored), then by stem. An example none of
    whose images has a caption keeps the captions it already had.
    """
    by_stem = {PurePosixPath(key).stem: text for key, text in captions.items()}
    out: list[E] = []
    hits = 0
    for example in examples:
        found = []
        for ref in example.images:
            name = PurePosixPath(ref.split("?", 1)[0]).name
            text = captions.get(name, by_stem.get(PurePosixPath(name).stem))
            if text is not None:
                found.append(text)
        hits += bool(found)
        out.append(replace(example, captions=found) if found else example)
    logger.info("captions found for %d of %d examples", hits, len(examples))
    return out


def read_groundability(
    path: str | Path, dataset: str | None = None, split: str | None = None
) -> GroundabilityTable:
    """Per-entity groundability, `{imgid: {(start, end): groundable}}`, optionally for one dataset/split.

    Rows without a `groundable` value (posts outside Grounded-MNER, `gmner` null) are left out, so a
    span missing from the table means "unknown", never "not groundable".
    """
    path = Path(path)
    table: GroundabilityTable = {}
    for line_no, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if (dataset is not None and row.get("dataset") != dataset) or (
                split is not None and row.get("split") != split
            ):
                continue
            if row.get("groundable") is None:
                continue
            span = (int(row["start"]), int(row["end"]))
            table.setdefault(str(row["imgid"]), {})[span] = bool(row["groundable"])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{path}:{line_no}: malformed groundability row ({exc})") from None
    return table


def attach_groundability(examples: Sequence[MnerExample], table: GroundabilityTable) -> list[MnerExample]:
    """Copies of the examples with `groundable` filled from the table (looked up by example id)."""
    out: list[MnerExample] = []
    stray = 0
    for example in examples:
        labels = table.get(example.id, {})
        gold = {(start, end) for start, end, _ in example.spans}
        stray += sum(1 for span in labels if span not in gold)
        out.append(replace(example, groundable=dict(labels)))
    if stray:
        logger.warning("%d groundability labels do not match a gold entity span", stray)
    return out


def read_rel2id(path: str | Path) -> list[str]:
    """Relation labels ordered by id from a `{label: id}` JSON file; ids must be exactly 0..n-1."""
    with open(path, encoding="utf-8-sig") as handle:
        mapping = json.load(handle)
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected a JSON object of label -> id")
    labels = sorted(mapping, key=lambda label: mapping[label])
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path}: relation ids must be 0..{len(mapping) - 1} without gaps or repeats")
    return labels
