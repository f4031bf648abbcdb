"""Digits said aloud, as a recogniser writes them: "four two seven, one nine three" → ``"427193"``.

A caller on a phone interview may say their PIN instead of keying it in (api/telephony/pin.py). Whisper
writes the same six digits in many ways: "427 193.", "4, 2, 7, 1, 9, 3.", "427193", "427-193", "Four two
seven one nine three", "My PIN is 901264."; PocketSphinx writes lower-case words. :func:`spoken_digits`
reads any of them, in order:

* numerals: every run of digits, whatever separates them ("427,193" and "4-2-7" are digits only);
* digit words: "zero" (and "nought", "nil"), "one" … "nine";
* "oh" / "o" for zero, and the homophones a recogniser writes for digits ("won", "to", "too", "for",
  "fore", "ate"), but only next to another digit: "oh five three" is 053, while "Oh, hello" and "I'd
  like to do it" have no digits;
* pairs said as numbers: "nineteen" is 19, "forty-two" 42, "forty" alone 40;
* "double" and "triple" before a digit: "double four" is 44.

Everything else ("my PIN is", "um", "the") is not a digit and is skipped. Hundreds and thousands ("four
hundred and twenty-seven") are not read: nobody says a PIN that way, and a wrong reading is worse than
none (the caller is asked again). English only, as the PIN prompt is.

Sans-I/O: text in, digits out.
"""

from __future__ import annotations

import itertools
import re

__all__ = ["spoken_digits"]

UNITS = {
    "zero": "0", "nought": "0", "naught": "0", "nil": "0",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
TEENS = {
    "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
    "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
}  # fmt: skip
TENS = {
    "twenty": "2", "thirty": "3", "forty": "4", "fourty": "4", "fifty": "5", "sixty": "6",
    "seventy": "7", "eighty": "8", "ninety": "9",
}  # fmt: skip
REPEATS = {"double": 2, "triple": 3}
# Words that are digits only among digits: a recogniser's spelling of a digit, or an ordinary word.
HOMOPHONES = {"oh": "0", "o": "0", "won": "1", "to": "2", "too": "2", "for": "4", "fore": "4", "ate": "8"}

_TOKENS = re.compile(r"[0-9]+|[a-z]+")
_BREAK = re.compile(r"[,.;:!?]")


def spoken_digits(text: str) -> str:
    """The digits ``text`` says, in order ("" if none; see the module docs for what counts)."""
    lowered = text.lower()
    found = list(_TOKENS.finditer(lowered))
    tokens = [m.group() for m in found]
    # a token followed by punctuation ends a pair: "forty-one" is 41, "forty, one" 401
    breaks = [bool(_BREAK.search(lowered, a.end(), b.start())) for a, b in itertools.pairwise(found)] + [True]
    digits = [_unambiguous(t) for t in tokens]
    _settle_homophones(tokens, digits)
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token, value = tokens[i], digits[i]
        nxt = digits[i + 1] if i + 1 < len(tokens) else None
        if token in REPEATS:
            if nxt is not None and len(nxt) == 1:  # "double four": 44
                out.append(nxt * REPEATS[token])
                i += 2
                continue
        elif token in TENS:
            if nxt is not None and len(nxt) == 1 and nxt != "0" and not tokens[i + 1].isdigit() and not breaks[i]:
                out.append(TENS[token] + nxt)  # "forty two": 42
                i += 2
                continue
            out.append(TENS[token] + "0")
        elif value is not None:
            out.append(value)
        i += 1
    return "".join(out)


def _unambiguous(token: str) -> str | None:
    """What ``token`` is as digits, if it can only be digits (a repeat word counts: it needs a digit after)."""
    if token.isdigit():
        return token
    if token in UNITS:
        return UNITS[token]
    if token in TEENS:
        return TEENS[token]
    if token in TENS:
        return TENS[token] + "0"
    if token in REPEATS:
        return ""
    return None


def _settle_homophones(tokens: list[str], digits: list[str | None]) -> None:
    """Read each homophone as its digit when a neighbour is a digit, until nothing changes ("oh oh seven")."""
    changed = True
    while changed:
        changed = False
        for i, token in enumerate(tokens):
            if digits[i] is None and token in HOMOPHONES:
                neighbours = digits[i - 1 : i] + digits[i + 1 : i + 2]
                if any(n for n in neighbours):
                    digits[i] = HOMOPHONES[token]
                    changed = True
