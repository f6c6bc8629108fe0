"""The data contract as JSON Schema files (draft 2020-12), shipped with the distribution.

Version rule: a file's ``$id`` ends in ``/vN``; adding an optional field keeps N, anything that
can break a reader (removing or renaming a field, changing a type) bumps N and the
``schema_version`` constant the records carry.
"""

from importlib import resources

NAMES = ("sample", "manifest", "shard_stats", "stats", "rejects")


def path(name: str):
    """Path-like of ``schemas/<name>.schema.json``."""
    if name not in NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(NAMES)}")
    return resources.files(__name__).joinpath(f"{name}.schema.json")
