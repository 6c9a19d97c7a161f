"""The one tokenizer of the index, for passages at build time and for queries.

Lower-cased word tokens of two or more characters (bm25s' default pattern), minus bm25s' English
stopwords; no stemming, so no extra dependency and names stay names. Queries additionally split
camel-case words ("#RedSox" -> "redsox", "red", "sox"), because posts glue names into hashtags and
handles while passage titles spell them apart. Passages are not split that way: "McDonald" should not
add "mc" and "donald" to the index. Changing anything here changes what an index means, so
`TOKENIZER` is part of the manifest and of the index identity.
"""

from __future__ import annotations

import re

from bm25s.stopwords import STOPWORDS_EN

TOKENIZER = "word2-lower-stopwords_en-querycamel/1"

_WORD = re.compile(r"(?u)\b\w\w+\b")
_CAMEL_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_STOP = frozenset(STOPWORDS_EN)


def passage_tokens(text: str) -> list[str]:
    return [t for t in (m.lower() for m in _WORD.findall(text)) if t not in _STOP]


def query_tokens(text: str) -> list[str]:
    """Distinct tokens in first-seen order: a word repeated in a post should not outweigh the rest."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text):
        candidates = [word.lower()]
        parts = _CAMEL_PART.findall(word)
        if len(parts) > 1:
            candidates += [p.lower() for p in parts if len(p) > 1]
        for token in candidates:
            if token not in _STOP:
                seen.setdefault(token, None)
    return list(seen)
