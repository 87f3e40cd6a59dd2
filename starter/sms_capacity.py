"""The partners' capacity commands of the SMS grammar: pure functions, no I/O.

    FULL                 COMPLET              ممتلئ               no new offers of any service
    FULL shelter 3d      COMPLET hébergement 3j      ممتلئ الإيواء 3 أيام   ... of that one, for 3 days
    OPEN shelter         OUVERT hébergement   متاح الإيواء        new offers again
    LINK                 LIEN                 رابط                a signed link to the capacity page

`starter.sms_commands.parse_sms` hands the words of a message whose first word is none of its
own keywords to `parse_capacity`, with its own keyword normal form (`key`: case, accents,
Arabic diacritics and letter variants folded), so both read a message alike. Every word after
the keyword must be understood (a service, a duration, a filler such as "pour"): "FULL until
Monday" is not read as FULL for ever, it is answered with the commands (`problem`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Literal

CapacityAction = Literal["full", "open", "link"]
# Words read after the keyword; a longer message is not a capacity command.
MAX_WORDS = 8
MAX_DURATION = timedelta(days=30)

_KEYWORDS: dict[str, tuple[str, ...]] = {
    "full": ("FULL", "COMPLET", "COMPLETE", "PLEIN", "SATURE", "ممتلئ", "ممتلئة", "مكتمل", "مكتملة"),
    "open": ("OPEN", "OUVERT", "OUVERTE", "DISPO", "DISPONIBLE", "AVAILABLE", "متاح", "متاحة", "مفتوح", "مفتوحة"),
    "link": ("LINK", "LIEN", "رابط"),
}
# A service's names as a partner may write them: its id and its words in the three catalogues.
_SERVICES: dict[str, tuple[str, ...]] = {
    "shelter": ("SHELTER", "HEBERGEMENT", "ABRI", "LOGEMENT", "HOUSING", "إيواء", "مأوى"),
    "medical": ("MEDICAL", "MEDICAL CARE", "SOINS", "SOINS MEDICAUX", "SANTE", "HEALTH", "طبي", "رعاية طبية", "رعاية", "صحة"),
    "psychosocial": ("PSYCHOSOCIAL", "PSYCHOSOCIAL SUPPORT", "SOUTIEN PSYCHOSOCIAL", "PSY", "نفسي", "دعم نفسي", "دعم نفسي واجتماعي"),
    "legal": ("LEGAL", "LEGAL AID", "JURIDIQUE", "AIDE JURIDIQUE", "قانوني", "مساعدة قانونية"),
    "child_protection": (
        "CHILD PROTECTION", "CHILD", "PROTECTION ENFANCE", "PROTECTION DE L'ENFANCE", "ENFANCE", "حماية طفولة", "حماية طفل",
    ),
    "interpretation": ("INTERPRETATION", "INTERPRETARIAT", "INTERPRETE", "ترجمة", "ترجمة فورية"),
    "return_and_reintegration": (
        "RETURN", "RETURN AND REINTEGRATION", "REINTEGRATION", "RETOUR", "RETOUR ET REINTEGRATION", "عودة", "عودة وإعادة إدماج",
    ),
}
_ALL = ("ALL", "TOUT", "TOUS", "TOUTES", "كل", "جميع")
_FILLERS = ("FOR", "POUR", "PENDANT", "DURANT", "لمدة", "مدة")
_UNITS: dict[str, tuple[str, ...]] = {
    "d": ("D", "J", "DAY", "DAYS", "JOUR", "JOURS", "JRS", "يوم", "أيام", "ايام"),
    "h": ("H", "HR", "HRS", "HOUR", "HOURS", "HEURE", "HEURES", "ساعة", "ساعات"),
}
_NUMBER_UNIT = re.compile(r"^(\d{1,3})([^\d]+)$")


@dataclass(frozen=True, slots=True)
class CapacityCommand:
    action: CapacityAction
    service: str | None = None  # None: all the partner's services
    duration: timedelta | None = None  # FULL only: it lapses by itself after this long
    problem: Literal["not_understood", "duration"] | None = None  # answered with the commands


@dataclass(frozen=True)
class _Tables:
    keywords: dict[str, str]
    services: dict[tuple[str, ...], str | None]  # words -> service (None: all)
    fillers: frozenset[str]
    units: dict[str, str]


# Small words inside a service's name, left out on both sides: "protection de l'enfance".
_CONNECTORS = frozenset({"DE", "DU", "DES", "LA", "LE", "L", "D", "ET", "AND", "OF", "و"})


def _bare(word: str) -> str:
    """A word without a French elision, an Arabic article or "and": L'ENFANCE and ENFANCE are
    one, and so are الإيواء, إيواء and والإيواء. Service names only (both sides alike)."""
    word = word.replace("’", "'").rpartition("'")[2] or word
    for prefix in ("وال", "ال", "و"):
        if word.startswith(prefix) and len(word) > len(prefix) + 2:
            return word[len(prefix):]
    return word


@cache
def _tables(key: Callable[[str], str]) -> _Tables:
    def words(text: str) -> tuple[str, ...]:
        return tuple(w for w in (_bare(key(w)) for w in text.split()) if w not in _CONNECTORS)

    services: dict[tuple[str, ...], str | None] = {words(s.replace("_", " ")): s for s in _SERVICES}
    for service, names in _SERVICES.items():
        services.update({words(name): service for name in names})
    services.update({words(name): None for name in _ALL})
    return _Tables(
        keywords={key(w): action for action, ws in _KEYWORDS.items() for w in ws},
        services=services,
        fillers=frozenset(key(w) for w in _FILLERS),
        units={key(w): unit for unit, ws in _UNITS.items() for w in ws},
    )


def _duration(number: str, unit: str, tables: _Tables) -> timedelta | None:
    kind = tables.units.get(unit)
    if kind is None:
        return None
    return timedelta(days=int(number)) if kind == "d" else timedelta(hours=int(number))


def parse_capacity(words: Sequence[str], key: Callable[[str], str]) -> CapacityCommand | None:
    """`words`: a message's words (digits as ASCII), at most MAX_WORDS + 2 of them; `key`: the
    keyword normal form. None when the first word is no capacity keyword."""
    tables = _tables(key)
    if not words:
        return None
    action = tables.keywords.get(key(words[0]))
    if action is None:
        return None
    command = CapacityCommand(action)  # type: ignore[arg-type]
    rest = [_bare(key(w)) for w in words[1:]]
    if len(rest) > MAX_WORDS:
        return CapacityCommand(command.action, problem="not_understood")
    duration: timedelta | None = None
    # A duration at the end: `3d`, `3 jours`, `٣ أيام`.
    if rest and (m := _NUMBER_UNIT.match(rest[-1])) and (duration := _duration(m[1], m[2], tables)) is not None:
        rest = rest[:-1]
    elif len(rest) >= 2 and rest[-2].isdigit() and (duration := _duration(rest[-2], rest[-1], tables)) is not None:
        rest = rest[:-2]
    if rest and rest[-1] in tables.fillers and duration is not None:
        rest = rest[:-1]
    service: str | None = None
    named = tuple(w for w in rest if w not in _CONNECTORS)
    if rest:
        if named not in tables.services:
            return CapacityCommand(command.action, problem="not_understood")
        service = tables.services[named]
    if duration is not None and (action != "full" or not timedelta(hours=1) <= duration <= MAX_DURATION):
        return CapacityCommand(command.action, service, problem="duration" if action == "full" else "not_understood")
    if action == "link" and service is not None:
        return CapacityCommand(command.action, problem="not_understood")
    return CapacityCommand(command.action, service, duration)
