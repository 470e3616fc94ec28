"""JSON from outside the process (the webhook's notifications, the media-control messages):
one loader that turns every way such a text can be wrong into one error, JsonRefused.

json.loads alone lets through more than a parse error: a ValueError for an integer of more than
4,300 digits (CPython's int max str digits limit, docs.python.org/3/library/stdtypes.html
#int-max-str-digits), RecursionError for deep nesting, UnicodeDecodeError for bytes that are
not UTF-8, and NaN/Infinity, which RFC 8259 section 6 does not allow. Here numbers are bounded
before they are converted (RFC 8259 section 9: "An implementation may set limits on the range
and precision of numbers"), and nesting is bounded well below the interpreter's recursion
limit, so the code that walks a parsed message (comparisons, json.dumps, repr) cannot hit it.

Pure: no I/O. media/ owns it because bot/ may import media/ and not the reverse.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_INTEGER_DIGITS = 40  # uint128 has 39; every id and counter in these protocols is far shorter
MAX_NUMBER_CHARS = 400  # a float literal longer than this is not a measurement
MAX_DEPTH = 64  # Graph's notifications nest about 8 deep, control messages 3
# Only an escape makes a surrogate (UTF-8 cannot encode one): texts without one skip that check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonRefused(ValueError):
    """Text that is not acceptable JSON; the message says why (never echoes the input)."""


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise JsonRefused(
            f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INTEGER_DIGITS})"
        )
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonRefused(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused(f"a number out of range: {text[:40]}")
    return value


def _constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON (RFC 8259 section 6)")


def loads(data: str | bytes | bytearray) -> Any:
    """Parse one JSON text. Raises JsonRefused, and only that, for anything unacceptable."""
    try:
        # RFC 8259 section 8.1: UTF-8 between systems (a BOM is refused, as section 8.1 allows).
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        value = json.loads(text, parse_int=_integer, parse_float=_float, parse_constant=_constant)
    except JsonRefused:
        raise
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise JsonRefused(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonRefused(f"nested more than {MAX_DEPTH} deep") from None
    except ValueError as exc:  # anything else the decoder refuses, never a crash
        raise JsonRefused(f"not JSON: {exc}") from None
    _check(value, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def _check(value: Any, strings: bool) -> None:
    """Depth and strings, level by level: iterative, so a deep value cannot recurse here
    either, and linear in the value's size."""
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        inner: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                if strings:
                    _check_strings(item)
                    _check_strings(item.values())
                inner.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                if strings:
                    _check_strings(item)
                inner.extend(v for v in item if isinstance(v, dict | list))
            elif strings:
                _check_strings((item,))
        if not inner:
            return
        level = inner
    raise JsonRefused(f"nested more than {MAX_DEPTH} deep")


def _check_strings(items: Any) -> None:
    # A \ud800 escape decodes to a lone surrogate, which no UTF-8 encoder takes (RFC 8259
    # section 8.2 calls its behavior unpredictable): refused here, not at the first .encode().
    for s in items:
        if isinstance(s, str) and not s.isascii():
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise JsonRefused("a string with an unpaired surrogate") from None
