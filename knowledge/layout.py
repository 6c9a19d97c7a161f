"""File names inside an index folder, shared by the builder and the loader."""

from __future__ import annotations

PASSAGES = "passages.jsonl"  # one Passage.to_json() line per document, in document order
OFFSETS = "passages.offsets.npy"  # uint64 (N + 1,): byte offset of each line, then the file size
VOCAB = "vocab.json"  # token list; a token's id is its position (bm25s' vocab file is not kept)
BM25_DIR = "bm25"  # bm25s.BM25.save output: params and the CSC score matrix
BM25_FILES = ("params.index.json", "data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy")
