"""The builder's version: part of every manifest, of the identity and of the default index's cache key.
Bump it whenever a change here would make the same corpus give a different index."""

BUILDER_VERSION = "1"
