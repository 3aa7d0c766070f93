"""Name rules shared by every resource (repos, prompts, targets, workspaces).

Names become path segments on storage and in URLs, so anything that could escape a folder or
confuse a path is refused, and the message names the offending character as Bread does.
"""

import re

from targets.errors import ValidationFailed

MAX_NAME_LENGTH = 128
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-]")


def validate_name(name: object, kind: str = "name") -> str:
    if not isinstance(name, str):
        raise ValidationFailed(f"{kind} must be a string")
    if name == "":
        raise ValidationFailed(f"{kind} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationFailed(f"{kind} is too long: {len(name)} characters (at most {MAX_NAME_LENGTH})")
    for char in name:
        if not _ALLOWED.fullmatch(char):
            raise ValidationFailed(f"Name contains invalid character: {char!r}")
    if name in (".", "..") or ".." in name:
        raise ValidationFailed("Name contains invalid sequence: '..'")
    if name.startswith("."):
        raise ValidationFailed(f"Name must not start with '.': {name!r}")
    return name
