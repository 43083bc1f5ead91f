# Copyright: mooring developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""JSON for a container's start: CPython's C scanner and encoder (the `_json` extension that the json package
itself runs on), without the package. Importing json pulls in re, enum, functools and collections: some 4 ms of
a `mooring-ctr run` that otherwise reads and writes its JSON in well under one.

The same values, text and errors as json's defaults (ensure_ascii, allow_nan, strict): what the C code does not
cover (indent, a syntax error's message with its position, a Python without `_json`) is left to the json package,
imported only then.
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"

try:
    import _json
except ImportError:  # another Python implementation: the json package does it all
    _json = None


class _Context:
    """What json's C scanner reads from its decoder: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


def _not_serializable(value):
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


_scan = _json.make_scanner(_Context()) if _json is not None else None


def loads(text):
    """json.loads(text)."""
    if _json is None or not isinstance(text, str):
        return _package().loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration:
        value, end = None, -1
    if end < 0 or text[end:].strip(_WHITESPACE):
        return _package().loads(text)  # raises json.JSONDecodeError, with json's message and position
    return value


def load(handle):
    """json.load(handle)."""
    return loads(handle.read())


def dumps(value, sort_keys=False, indent=None):
    """json.dumps(value, sort_keys=sort_keys, indent=indent)."""
    if _json is None or indent is not None:
        return _package().dumps(value, sort_keys=sort_keys, indent=indent)
    # The C encoder checks for cycles through the dict it is given: a fresh one per call.
    encoder = _json.make_encoder(
        {}, _not_serializable, _json.encode_basestring_ascii, None, ": ", ", ", sort_keys, False, True
    )
    return "".join(encoder(value, 0))


def _package():
    import json  # noqa: PLC0415 - only for what the C code does not do

    return json
