"""Parse a partner's SMS reply into a command: pure functions, no I/O.

The grammar (product brief, "SMS grammar"): a keyword first, then optionally the referral code
(with or without its `R-`), then for a decline an optional reason code (a number of
`ledger.record.DECLINE_CODES`), then for a decline or an issue an optional free text::

    A 7K3Q9            ACCEPT, r-7k3q9!      oui 7k3q9        نعم7K3Q9      نعم ٧K٣Q٩
    D 7K3Q9 1 no beds tonight                 NON 7K3Q9        ISSUE R-7K3Q9: interpreter missing
    OK 7K3Q9           DONE 7K3Q9            HELP             STOP

A decline's first word after the code (after the keyword when there is no code) is its reason
code when it is a number: `D 7K3Q9 3`, `لا 7K3Q9 ٣`, `D 7K3Q9 (1) full`. A number that is not one
of the codes (`D 7K3Q9 5`) sets `unknown_decline_code`, so the webhook answers with the list of
codes instead of recording a decline without its reason. A number glued to letters or followed by
`.`, `,`, `:` or `/` and a digit (`10h30`, `3.5`, `12/05`) is a time or a quantity: free text.

Matching is case-insensitive, on the NFKC form, with accents, Arabic diacritics and tatweel
ignored in keywords; spaces and punctuation between the parts are tolerated. Without a code an
action is still returned (code None): the webhook applies it only when the sender has exactly
one pending item. Whatever cannot be read is action "unknown". `parse_sms` never raises.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, cast, get_args

from ledger.record import DECLINE_CODES, DeclineCode
from starter.sms_capacity import MAX_WORDS, CapacityCommand, parse_capacity

__all__ = [
    "ACTIONS",
    "CODE_ALPHABET",
    "CODE_LENGTH",
    "KEYWORDS",
    "MAX_TEXT_LENGTH",
    "Action",
    "SmsCommand",
    "normalise_code",
    "parse_sms",
]

# No 0/1/2/5/8/B/I/L/O/S/Z: nothing in a code can be misread in an SMS.
CODE_ALPHABET = "34679ACDEFGHJKMNPQRTUVWXY"
CODE_LENGTH = 5
MAX_TEXT_LENGTH = 500

Action = Literal["accept", "decline", "ok", "done", "issue", "help", "stop", "start", "unknown"]
ACTIONS: frozenset[str] = frozenset(get_args(Action))


@dataclass(frozen=True, slots=True)
class SmsCommand:
    action: Action
    code: str | None = None  # the bare upper-case code, e.g. "7K3Q9"
    text: str | None = None  # decline reason / issue note: trimmed, <= 500 chars, None if empty
    decline_code: DeclineCode | None = None  # a decline's reason code (ledger.record.DECLINE_CODES)
    unknown_decline_code: bool = False  # a decline whose number is not one of the codes


_UNKNOWN = SmsCommand("unknown")

# --- keywords ------------------------------------------------------------------------------
# Written as a partner would type them; they are stored in the same normal form as the tokens
# of a message (see _key), so "ACCEPTÉ", "accepte" and "ACCEPTE" are one keyword, and so are
# "مساعدة", "مُساعَدة" and "مساعده".
_KEYWORDS_BY_ACTION: dict[str, tuple[str, ...]] = {
    "accept": ("A", "ACCEPT", "ACCEPTE", "ACCEPTED", "OUI", "YES", "نعم"),
    "decline": ("D", "DECLINE", "DECLINED", "NON", "NO", "REFUSE", "REFUSED", "REFUS", "لا"),
    "ok": ("OK",),
    "done": ("DONE", "FIN", "TERMINE"),
    "issue": ("ISSUE", "PROBLEME", "PROBLÈME", "PROBLEM"),
    # INFO is Twilio's other HELP keyword.
    "help": ("HELP", "INFO", "AIDE", "مساعدة"),
    # Twilio's opt-out and opt-in keywords (Twilio acts on them only as a single-word message).
    "stop": ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"),
    "start": ("START", "UNSTOP"),
}

# YES is both an accept keyword here and Twilio's opt-in keyword (with START and UNSTOP).
# Twilio opts a number back in only when the whole message is the single word YES, so a bare
# `YES` (punctuation aside) is "start", exactly what Twilio did with it; `YES 7K3Q9`, or YES
# followed by anything else, is "accept". A partner who is not opted out and answers a bare
# YES to an offer therefore gets "start" (code None): the webhook may choose to treat that as
# an accept when the sender has exactly one pending item.
_YES = "YES"

# CANCEL, END and QUIT are opt-out keywords for Twilio, but also ordinary words a partner may
# use for something else ("END 7K3Q9" for done, "CANCEL 7K3Q9" for decline). Like Twilio, they
# mean "stop" only as a single-word message; followed by anything they are "unknown", so the
# webhook answers with the list of commands rather than guessing. STOP, STOPALL,
# UNSUBSCRIBE, START and UNSTOP are unambiguous and count even with more words after them.
_SINGLE_WORD_ONLY = frozenset({"CANCEL", "END", "QUIT"})

# "A" is also the English article and (accent stripped) the French "à": after "A" the next
# word must be the code (or R-, "code", ...), otherwise the message is "unknown". "A 7K3Q9",
# "A" and "A!" are accepts; "A problem with 7K3Q9" is not.
_GUARDED = frozenset({"A"})

# "No problem" / "No worries" mean yes; they are not declines.
_NOT_A_DECLINE_AFTER_NO = frozenset({"PROBLEM", "PROBLEMS", "PROB", "PROBLEMO", "WORRIES", "WORRY"})

# Words that may stand between the keyword and the code: "OK code 7K3Q9", "DONE ref 7K3Q9",
# "D N° 7K3Q9" and Arabic "رمز / رقم / كود" (code, number).
_FILLERS_RAW = ("R", "REF", "REFERENCE", "REFERRAL", "CODE", "N", "NUM", "NUMERO", "NR",
                "رمز", "الرمز", "رقم", "الرقم", "كود", "الكود")

# How many words after the keyword are searched for the code.
_WINDOW = 4

# Arabic-Indic (U+0660..) and Extended Arabic-Indic (U+06F0..) digits to ASCII, one for one.
_DIGITS = {base + i: ord("0") + i for base in (0x0660, 0x06F0) for i in range(10)}
# Normalised Arabic letter variants: ta marbuta -> ha, alef maqsura -> ya, Persian yeh/keheh.
_ARABIC_FOLD = str.maketrans({"ة": "ه", "ى": "ي", "ی": "ي", "ک": "ك"})
_TATWEEL = "ـ"
_VARIATION_SELECTORS = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_APOSTROPHES = frozenset("'’")
# French elisions ("d'accord", "j'accepte", "l'enfant"): the apostrophe stays inside the word,
# so "D'accord" is never read as D (decline).
_ELISIONS = frozenset({"C", "D", "J", "L", "M", "N", "S", "T", "QU"})
# Leading characters dropped from a reason ("D 7K3Q9: no beds" -> "no beds", "D (R-7K3Q9)").
_TEXT_LEAD = frozenset(":;,.-–—_/\\|!?#~*=+>»)]}·•،؛؟")
# Trailing characters dropped from the words before a code ("sorry (R-7K3Q9)" -> "sorry").
_TEXT_BEFORE_CODE = " \t([{«#\"'“‘:-–—"

# Only this much of a message is read: a concatenated SMS is at most ~1,600 characters.
_MAX_INPUT = 4000
_CODE_CHARS = frozenset(CODE_ALPHABET)


def _key(word: str) -> str:
    """The form keywords are compared in: no accents, harakat or tatweel, upper case."""
    decomposed = unicodedata.normalize("NFD", word)
    stripped = "".join(
        c for c in decomposed if c != _TATWEEL and not unicodedata.category(c).startswith("M")
    )
    return unicodedata.normalize("NFC", stripped).translate(_ARABIC_FOLD).upper()


# Normalised keyword -> action (read-only).
KEYWORDS: Mapping[str, str] = MappingProxyType(
    {_key(word): action for action, words in _KEYWORDS_BY_ACTION.items() for word in words}
)
_FILLERS = frozenset(_key(w) for w in _FILLERS_RAW)
# Longer words are not even normalised: no keyword or filler is that long, even written with
# every Arabic diacritic and tatweel.
_MAX_KEY_INPUT = 40


# --- text preparation ----------------------------------------------------------------------
def _prepare(body: object) -> tuple[str, str]:
    """(display, match): two strings of equal length, aligned character for character.

    display: NFKC, control characters as spaces, format characters (RTL marks, zero-width
    joiners, BOM) and lone surrogates removed. match: the same with Arabic-Indic digits as ASCII.
    """
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", "replace")
    if not isinstance(body, str):
        return "", ""
    raw = body[:_MAX_INPUT]
    if not raw.isprintable():
        kept = []
        for ch in raw:
            if ch.isprintable():
                kept.append(ch)
                continue
            category = unicodedata.category(ch)
            if category in ("Cf", "Cs"):
                continue  # RTL/LTR marks, zero-width characters, BOM, lone surrogates
            kept.append(" ")  # controls (NUL, newlines, tabs), separators, private use
        raw = "".join(kept)
    display = unicodedata.normalize("NFKC", raw)
    if not display.isprintable():  # NFKC may turn a compatibility character into a space
        display = "".join(ch if ch.isprintable() else " " for ch in display)
    # Variation selectors (the emoji/text presentation hints in "❤️") would otherwise glue onto
    # the word before them: "7K3Q9\ufe0f" must stay the code 7K3Q9.
    display = _VARIATION_SELECTORS.sub("", display)
    return display, display.translate(_DIGITS)


def _is_arabic(ch: str) -> bool:
    return "\u0600" <= ch <= "\u06ff" or "\u0750" <= ch <= "\u077f" or "\u0870" <= ch <= "\u08ff"


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def _tokens(s: str, limit: int) -> list[tuple[int, int]]:
    """Spans of the first `limit` words: runs of letters, digits and marks.

    Everything else separates words (spaces, punctuation, symbols, emoji), and so does a change
    between Arabic and other scripts, so `نعم7K3Q9` is two words.
    """
    spans: list[tuple[int, int]] = []
    n = len(s)
    i = 0
    while i < n and len(spans) < limit:
        ch = s[i]
        if not (ch.isalnum() or _is_mark(ch)):
            i += 1
            continue
        start = i
        arabic = _is_arabic(ch)
        i += 1
        while i < n:
            ch = s[i]
            if ch.isalnum():
                if _is_arabic(ch) != arabic:
                    break
            elif _is_mark(ch) or (
                ch in _APOSTROPHES
                and i + 1 < n
                and s[i + 1].isalpha()
                and s[start:i].upper() in _ELISIONS
            ):
                pass
            else:
                break
            i += 1
        spans.append((start, i))
    return spans


def _bare_code(word: str) -> str | None:
    """A word that is a code by itself: `7K3Q9`, or `R7K3Q9` (six characters starting with R)."""
    if len(word) == CODE_LENGTH + 1 and word[0] in "Rr":
        word = word[1:]
    if len(word) != CODE_LENGTH:
        return None
    word = word.upper()
    if len(word) == CODE_LENGTH and all(c in _CODE_CHARS for c in word):
        return word
    return None


def normalise_code(text: str) -> str | None:
    """The bare upper-case code written in `text`, or None.

    Accepts `7K3Q9`, `7k3q9`, `R-7K3Q9`, `r-7k3q9`, `R 7K3Q9`, `R7K3Q9`, `#7K3Q9`, `(R-7K3Q9).`,
    full-width or Arabic-Indic digits; anything else in `text` makes it None. Never raises.
    """
    try:
        _, match = _prepare(text)
        spans = _tokens(match, 3)
        words = [match[a:b] for a, b in spans]
        if len(words) == 1:
            return _bare_code(words[0])
        if len(words) == 2 and words[0] in ("R", "r") and len(words[1]) == CODE_LENGTH:
            return _bare_code(words[1])
        return None
    except Exception:  # pragma: no cover - defensive: a parser of untrusted input never raises
        return None


# --- parsing -------------------------------------------------------------------------------
def _find_code(
    display: str, match: str, spans: list[tuple[int, int]], *, strict: bool
) -> tuple[str | None, int, int, bool]:
    """Look for the code in the words after the keyword (spans[1:]).

    Returns (code, span start, span end, first): the span covers the code with its `R`
    and any filler word before it; `first` says the code was the first thing after the
    keyword. A code preceded by R (`R-7K3Q9`, `R7K3Q9`) or `#` is "marked" and is found
    anywhere in the window. An unmarked one is found in first position (after fillers), or,
    unless `strict`, anywhere in the window when it has a digit: five-letter words made of the
    alphabet (THANK, THREE, WATER) are common, so "OK thanks THREE days" has no code. Declines
    and issues are `strict`: their reason text may hold anything.
    """
    words = [match[a:b] for a, b in spans]
    last = min(len(spans), 1 + _WINDOW)
    only_fillers = True  # every word so far (after the keyword) was a filler
    filler_start: int | None = None
    i = 1
    while i < last:
        a, b = spans[i]
        word = words[i]
        key = _key(word) if len(word) <= _MAX_KEY_INPUT else ""
        # "R" then a five-character code: R-7K3Q9, R 7K3Q9.
        if key == "R" and i + 1 < len(spans) and len(words[i + 1]) == CODE_LENGTH:
            code = _bare_code(words[i + 1])
            if code:
                start = filler_start if (only_fillers and filler_start is not None) else a
                return code, start, spans[i + 1][1], only_fillers
        code = _bare_code(word)
        if code:
            marked = len(word) == CODE_LENGTH + 1 or display[:a].rstrip().endswith("#")
            if only_fillers or marked or (not strict and any(c.isdigit() for c in code)):
                start = filler_start if (only_fillers and filler_start is not None) else a
                return code, start, b, only_fillers
        if key in _FILLERS:
            if only_fillers and filler_start is None:
                filler_start = a
        else:
            only_fillers = False
        i += 1
    return None, 0, 0, False


def _clean_text(text: str) -> str | None:
    text = " ".join(text.split())
    i = 0
    while i < len(text) and (text[i] in _TEXT_LEAD or text[i].isspace()):
        i += 1
    text = text[i:][:MAX_TEXT_LENGTH].rstrip()
    return text or None


def _looks_like_code(word: str) -> bool:
    """A mistyped code (`7K3Q0`, `7K3Q`, `12345`): four to seven ASCII letters/digits, a digit."""
    return (
        4 <= len(word) <= CODE_LENGTH + 2
        and word.isascii()
        and word.isalnum()
        and any(c.isdigit() for c in word)
    )


# How many digits a reason code may be written with ("01" is 1); a longer number is no code.
_MAX_CODE_DIGITS = 3
_ASCII_DIGITS = frozenset("0123456789")
# Before a reason code: spaces and the punctuation of "D 7K3Q9: 1", "D 7K3Q9 - #1", "D 7K3Q9 (1)".
_BEFORE_NUMBER = _TEXT_LEAD | frozenset("([{«\"'“‘")
# A number followed by one of these and a digit is a time, a date or a quantity (10:30, 3.5, 12/05).
_NUMBER_JOINERS = frozenset(".,:/٫")


def _reason_number(match: str, start: int) -> tuple[str | None, int]:
    """The number written first from `start` (ASCII digits in `match`) and where it ends; (None,
    start) when the first word there is not a number on its own."""
    n = len(match)
    i = start
    while i < n and (match[i].isspace() or match[i] in _BEFORE_NUMBER):
        i += 1
    j = i
    while j < n and match[j] in _ASCII_DIGITS:
        j += 1
    if j == i:
        return None, start
    if j < n and (match[j].isalnum() or _is_mark(match[j])):
        return None, start  # "10h30", "3rd", "2beds": a word, not a code
    if j + 1 < n and match[j] in _NUMBER_JOINERS and match[j + 1] in _ASCII_DIGITS:
        return None, start
    return match[i:j], j


def _decline_code(number: str) -> DeclineCode | None:
    if len(number) > _MAX_CODE_DIGITS:
        return None
    value = int(number)
    return cast(DeclineCode, value) if value in DECLINE_CODES else None


def _parse(body: object) -> SmsCommand | CapacityCommand:
    display, match = _prepare(body)
    spans = _tokens(match, 2 + _WINDOW + 1)
    if not spans:
        return _UNKNOWN
    words = [match[a:b] for a, b in spans]
    keys = [_key(w) if len(w) <= _MAX_KEY_INPUT else "" for w in words]
    keyword = keys[0]
    action = KEYWORDS.get(keyword)
    if action is None:  # FULL, OPEN, LINK (starter/sms_capacity.py), or nothing we know
        return parse_capacity([match[a:b] for a, b in _tokens(match, MAX_WORDS + 2)], _key) or _UNKNOWN
    alone = len(spans) == 1

    if keyword == _YES and alone:
        return SmsCommand("start")
    if keyword in _SINGLE_WORD_ONLY and not alone:
        return _UNKNOWN
    if keyword == "NO" and not alone and keys[1] in _NOT_A_DECLINE_AFTER_NO:
        return _UNKNOWN

    takes_text = action in ("decline", "issue")
    code, code_start, code_end, first_after = _find_code(display, match, spans, strict=takes_text)

    if code is None:
        # The first word after the keyword and its fillers ("R", "code", ...).
        attempt = next((w for w, k in zip(words[1:], keys[1:], strict=True) if k not in _FILLERS), None)
        if attempt is not None and _looks_like_code(attempt):
            # A mistyped code ("A 7K3Q0"): it names a referral, just not a valid one. Never
            # let the webhook apply the reply to the sender's only pending item; "unknown"
            # makes it answer with the codes to choose from.
            return _UNKNOWN
    if keyword in _GUARDED and not alone and not first_after and keys[1] not in _FILLERS:
        return _UNKNOWN

    text = None
    decline_code: DeclineCode | None = None
    unknown_decline_code = False
    if takes_text:
        first_end = spans[0][1]
        before = None
        if code is None:
            start = first_end
        elif first_after:  # only fillers and punctuation stood between keyword and code
            start = code_end
        else:  # "D sorry R-7K3Q9 no beds": the words before the code are part of the reason
            before = display[first_end:code_start].rstrip().rstrip(_TEXT_BEFORE_CODE)
            start = code_end
        if action == "decline":
            number, start = _reason_number(match, start)
            if number is not None:
                decline_code = _decline_code(number)
                unknown_decline_code = decline_code is None
        rest = display[start:] if before is None else before + " " + display[start:]
        text = _clean_text(rest)
    return SmsCommand(action, code, text, decline_code, unknown_decline_code)  # type: ignore[arg-type]


def parse_sms(body: str) -> SmsCommand | CapacityCommand:
    """Read one partner SMS. Never raises: anything unreadable is `SmsCommand("unknown")`."""
    try:
        return _parse(body)
    except Exception:  # pragma: no cover - defensive: a parser of untrusted input never raises
        return _UNKNOWN
