"""Where a ``--model`` / ``model:`` value points: a local folder or a Hugging Face Hub id.

``from_pretrained`` treats anything that is not an existing folder as a Hub id, so a typo in a
local path ends in a Hub repo-id validation error that never mentions the missing folder. A value
that can only be a path (absolute, ``./``, ``../``, ``~``, or more than one ``/``: Hub ids are
``NAME`` or ``ORG/NAME``) and does not exist is refused here, naming the path.
"""

from __future__ import annotations

import os


def looks_like_path(value: str) -> bool:
    return (os.path.isabs(value) or value.startswith(("./", "../", "~")) or value.count("/") > 1
            or os.sep != "/" and os.sep in value)


def check_model_source(value: str, what: str = "model") -> str:
    """Return ``value``; raise ``FileNotFoundError`` if it is a local path that is not a folder."""
    path = os.path.expanduser(value)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{value}: a {what} must be a folder (from save_pretrained) or a Hub id ORG/NAME")
    if looks_like_path(value):
        raise FileNotFoundError(f"{value}: no such {what} folder (Hub ids look like ORG/NAME)")
    return value
