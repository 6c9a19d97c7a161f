"""Find the local file behind an image reference (id, file name, relative path) and load it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from PIL import Image

from model.image_decode import bounded_upright_rgb

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


def is_url(ref: str) -> bool:
    """True for references that name a remote or inline resource rather than a local file."""
    return "://" in ref or ref.startswith("data:")


class ImageStore:
    """Resolves image references against an explicit mapping and/or a folder of images.

    A reference may be an id (`1015799`), a file name (`1015799.jpg`, as in UMT and MNRE), a path
    relative to the root, or an absolute path. Lookup order: the mapping (by the reference, its file
    name, then its stem), an absolute path, `root / ref`, then any file under `root` with that name or
    stem (the folder is indexed once, lazily, so datasets can keep images in sub-folders). URLs are only
    found through the mapping: fetching is the service's job, not the store's.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        mapping: Mapping[str, str | Path] | None = None,
        suffixes: Iterable[str] = IMAGE_SUFFIXES,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.mapping = {key: self._under_root(Path(value)) for key, value in (mapping or {}).items()}
        self.suffixes = {suffix.lower() for suffix in suffixes}
        self._by_name: dict[str, Path] | None = None
        self._by_stem: dict[str, Path] = {}

    def _under_root(self, path: Path) -> Path:
        return path if path.is_absolute() or self.root is None else self.root / path

    def _index(self) -> dict[str, Path]:
        """File name -> path for every image under root (first in sorted order wins on clashes)."""
        if self._by_name is None:
            self._by_name = {}
            if self.root is not None and self.root.is_dir():
                clashes = 0
                for path in sorted(self.root.rglob("*")):
                    if path.suffix.lower() not in self.suffixes or not path.is_file():
                        continue
                    if path.name in self._by_name:
                        clashes += 1
                        continue
                    self._by_name[path.name] = path
                    self._by_stem.setdefault(path.stem, path)
                if clashes:
                    logger.warning("%d image file names under %s occur more than once", clashes, self.root)
        return self._by_name

    def get(self, ref: str) -> Path | None:
        """Local path of an existing file for `ref`, or None when there is none."""
        if not ref:
            return None
        # PurePosixPath so that names inside URL-like or Windows-free refs split on "/" only.
        pure = PurePosixPath(ref)
        for key in (ref, pure.name, pure.stem):
            mapped = self.mapping.get(key)
            if mapped is not None and mapped.is_file():
                return mapped
        if is_url(ref):
            return None
        path = Path(ref)
        if path.is_absolute():
            return path if path.is_file() else None
        if self.root is None:
            return path if path.is_file() else None
        direct = self.root / path
        if direct.is_file():
            return direct
        by_name = self._index()
        return by_name.get(pure.name) or self._by_stem.get(pure.name) or self._by_stem.get(pure.stem)

    def __contains__(self, ref: object) -> bool:
        return isinstance(ref, str) and self.get(ref) is not None

    def load(self, ref: str) -> Image.Image | None:
        """The image as RGB, or None when it is missing or unreadable (logged, never raised)."""
        path = self.get(ref)
        if path is None:
            return None
        try:
            with Image.open(path) as image:
                return bounded_upright_rgb(image)  # the pixels the service would decode from these bytes
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            logger.warning("cannot read image %s: %s", path, exc)
            return None
