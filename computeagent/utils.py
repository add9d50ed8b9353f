"""Small helpers shared by several layers."""
import os
import re
import uuid as uuidlib

from computeagent import exception

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def validate_uuid(value, what="uuid"):
    """Return ``value`` if it is a canonical lower-case UUID string, else raise.

    Only strings that pass this check are ever joined into a filesystem path.
    """
    if not isinstance(value, str) or not UUID_RE.match(value):
        raise exception.InvalidInput(reason="%s must be a canonical UUID" % what)
    return str(uuidlib.UUID(value))


def safe_join(root, *parts):
    """Join ``parts`` under ``root`` and refuse any result that escapes it."""
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, *parts))
    if path != root and not path.startswith(root + os.sep):
        raise exception.InvalidInput(reason="path escapes %s" % root)
    return path


_URL_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def redact_urls(text):
    """``text`` with the credentials of every URL in it replaced
    (``https://user:secret@host/`` -> ``https://***@host/``)."""
    if not isinstance(text, str):
        return text
    return _URL_USERINFO_RE.sub(r"\1***@", text)


def public_image(image):
    """The image dict without URL credentials (what domain XML metadata and
    replies may carry)."""
    if not isinstance(image, dict) or "url" not in image:
        return image
    return dict(image, url=redact_urls(image["url"]))
