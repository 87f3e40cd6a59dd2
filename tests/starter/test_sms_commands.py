"""The partner SMS grammar (product brief, "SMS grammar"): examples, then properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from starter.sms_capacity import CapacityCommand
from starter.sms_commands import (
    ACTIONS,
    CODE_ALPHABET,
    CODE_LENGTH,
    MAX_TEXT_LENGTH,
    SmsCommand,
    normalise_code,
    parse_sms,
)
from workflows.intake import SERVICES

CODE = "7K3Q9"

# Written here rather than imported, so the tests check the module against the brief.
ACCEPT_WORDS = ["A", "ACCEPT", "ACCEPTE", "ACCEPTÉ", "ACCEPTED", "OUI", "YES", "نعم"]
DECLINE_WORDS = ["D", "DECLINE", "NON", "NO", "REFUSE", "REFUSÉ", "REFUS", "لا"]
KEYWORD_ACTIONS = (
    [(w, "accept") for w in ACCEPT_WORDS]
    + [(w, "decline") for w in DECLINE_WORDS]
    + [("OK", "ok"), ("DONE", "done"), ("FIN", "done"), ("TERMINE", "done"), ("TERMINÉ", "done")]
    + [("ISSUE", "issue"), ("PROBLEME", "issue"), ("PROBLÈME", "issue")]
    + [("HELP", "help"), ("AIDE", "help"), ("مساعدة", "help")]
    + [(w, "stop") for w in ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"]]
    + [("START", "start"), ("UNSTOP", "start")]
)
# Ways to write 7K3Q9.
CODE_FORMS = [
    "7K3Q9", "7k3q9", "R-7K3Q9", "r-7k3q9", "R 7K3Q9", "R7K3Q9", "r7k3q9", "#7K3Q9", "R - 7K3Q9",
    "R–7K3Q9", "(R-7K3Q9)", "R-7K3Q9.", "Ｒ－７Ｋ３Ｑ９", "٧K٣Q٩", "R-۷K۳Q۹", "#٧k٣q٩",
]
FORBIDDEN = "01258BILOSZ"


# The reason codes of a decline (product brief, "SMS grammar"), written here rather than imported.
DECLINE_CODES = (1, 2, 3, 4, 9)


def cmd(
    action: str, code: str | None = None, text: str | None = None, decline_code: int | None = None, unknown: bool = False
) -> SmsCommand:
    return SmsCommand(action, code, text, decline_code, unknown)  # type: ignore[arg-type]


# --- codes ---------------------------------------------------------------------------------
def test_alphabet() -> None:
    assert CODE_LENGTH == 5
    assert len(set(CODE_ALPHABET)) == len(CODE_ALPHABET) == 25
    assert not set(CODE_ALPHABET) & set(FORBIDDEN)


@pytest.mark.parametrize("form", [*CODE_FORMS, "  7K3Q9  ", "r 7k3q9", "\u200f7K3Q9\u200f"])
def test_normalise_code_forms(form: str) -> None:
    assert normalise_code(form) == CODE


@pytest.mark.parametrize(
    "text, expected",
    [
        ("R7K3Q", "R7K3Q"),  # five characters: R is a code character too
        ("RR7K3Q", "R7K3Q"),
        ("", None), ("   ", None), ("R", None), ("R-", None), ("7K3Q", None), ("7K3Q99", None),
        ("X7K3Q9", None), ("7K 3Q9", None), ("code 7K3Q9", None), ("7K3Q9 R", None),
        ("A 7K3Q9", None), ("R R7K3Q9", None), ("\x00", None), ("\ud800", None),
    ],
)
def test_normalise_code_other(text: str, expected: str | None) -> None:
    assert normalise_code(text) == expected


@pytest.mark.parametrize("bad", FORBIDDEN + FORBIDDEN.lower())
def test_forbidden_character_is_not_a_code(bad: str) -> None:
    code = "7K3Q" + bad
    assert normalise_code(code) is None
    assert normalise_code("R-" + code) is None
    for body in (f"A {code}", f"ACCEPT {code}", f"D {code} no beds", f"OK R-{code}"):
        result = parse_sms(body)
        assert result.code is None
        # A mistyped code names a referral, just not a valid one: never applied by default.
        assert result.action == "unknown", body


# --- keywords ------------------------------------------------------------------------------
@pytest.mark.parametrize("word, action", KEYWORD_ACTIONS)
@pytest.mark.parametrize("case", [str.upper, str.lower, str.title])
def test_every_keyword_alone(word: str, action: str, case) -> None:
    expected = "start" if word == "YES" else action  # Twilio's opt-in: see below
    assert parse_sms(case(word)) == cmd(expected)
    assert parse_sms(f"  {case(word)}!  ") == cmd(expected)


@pytest.mark.parametrize("word, action", [(w, a) for w, a in KEYWORD_ACTIONS if a not in ("stop",)])
def test_every_keyword_with_every_code_form(word: str, action: str) -> None:
    for form in CODE_FORMS:
        for body in (f"{word} {form}", f"{word.lower()}: {form}!", f"{word.title()}\n{form}\n"):
            assert parse_sms(body) == cmd(action, CODE), body


@pytest.mark.parametrize(
    "body, expected",
    [
        # the brief's own examples
        ("A 7K3Q9", cmd("accept", CODE)),
        ("A 7K3Q9.", cmd("accept", CODE)),
        ("a: r-7k3q9", cmd("accept", CODE)),
        ("ACCEPT, 7K3Q9!", cmd("accept", CODE)),
        ("  oui   7k3q9 ", cmd("accept", CODE)),
        ("ACCEPT R - 7K3Q9", cmd("accept", CODE)),
        ("ACCEPTED\n7K3Q9\n", cmd("accept", CODE)),
        ("Accepté 7K3Q9 merci", cmd("accept", CODE)),
        ("OUI code 7K3Q9", cmd("accept", CODE)),
        ("A #7K3Q9", cmd("accept", CODE)),
        ("ACCEPT please R-7K3Q9", cmd("accept", CODE)),
        ("ACCEPT please 7K3Q9", cmd("accept", CODE)),
        ("Ａ　７Ｋ３Ｑ９", cmd("accept", CODE)),  # full-width
        ("A 7K3Q9 👍", cmd("accept", CODE)),
        ("OK 7K3Q9", cmd("ok", CODE)),
        ("ok, R-7K3Q9 thanks", cmd("ok", CODE)),
        ("DONE 7K3Q9", cmd("done", CODE)),
        ("Fin 7K3Q9", cmd("done", CODE)),
        ("terminé r7k3q9", cmd("done", CODE)),
        ("HELP 7K3Q9", cmd("help", CODE)),
        ("aide ?", cmd("help")),
        # without a code: the webhook applies it only to the sender's single pending item
        ("A", cmd("accept")),
        ("A!", cmd("accept")),
        ("Oui", cmd("accept")),
        ("yes please", cmd("accept")),
        ("Non", cmd("decline")),
        ("OK", cmd("ok")),
        ("OK thanks THREE days", cmd("ok")),  # an unmarked all-letter word further on is no code
        ("done.", cmd("done")),
        # YES: Twilio's opt-in when it is the whole message; with a code it is an accept
        ("YES", cmd("start")),
        ("yes!", cmd("start")),
        ("YES 7K3Q9", cmd("accept", CODE)),
        ("Yes, R-7K3Q9", cmd("accept", CODE)),
        # opt-out / opt-in
        ("STOP", cmd("stop")),
        ("stop.", cmd("stop")),
        ("Stop please", cmd("stop")),
        ("UNSUBSCRIBE", cmd("stop")),
        ("STOPALL", cmd("stop")),
        ("cancel", cmd("stop")),
        ("END", cmd("stop")),
        ("Quit!", cmd("stop")),
        ("START", cmd("start")),
        ("unstop", cmd("start")),
        # CANCEL/END/QUIT are opt-outs only as a single word (like Twilio); otherwise unknown
        ("END 7K3Q9", cmd("unknown")),
        ("cancel 7K3Q9", cmd("unknown")),
        ("quit now", cmd("unknown")),
        # not commands
        ("", cmd("unknown")),
        ("   ", cmd("unknown")),
        ("hello", cmd("unknown")),
        ("7K3Q9", cmd("unknown")),
        ("R-7K3Q9 A", cmd("unknown")),  # keyword first
        ("7K3Q9 ACCEPT", cmd("unknown")),
        ("Bonjour, A 7K3Q9", cmd("unknown")),
        ("D'accord 7K3Q9", cmd("unknown")),  # French elision: not D (decline)
        ("d’accord", cmd("unknown")),
        ("A problem with 7K3Q9", cmd("unknown")),  # "A" must be followed by the code
        ("A lot of thanks", cmd("unknown")),
        ("No problem", cmd("unknown")),
        ("no worries!", cmd("unknown")),
        ("ACCEPT7K3Q9", cmd("unknown")),  # Latin keyword glued to the code
        ("👍", cmd("unknown")),
        ("?", cmd("unknown")),
    ],
)
def test_examples(body: str, expected: SmsCommand) -> None:
    assert parse_sms(body) == expected


# --- decline reasons and issue texts -------------------------------------------------------
@pytest.mark.parametrize(
    "body, expected",
    [
        ("D 7K3Q9 no beds tonight", cmd("decline", CODE, "no beds tonight")),
        ("D 7K3Q9: no beds tonight.", cmd("decline", CODE, "no beds tonight.")),
        ("DECLINE R-7K3Q9 - full until Monday", cmd("decline", CODE, "full until Monday")),
        ("NON 7k3q9 pas de place, désolé", cmd("decline", CODE, "pas de place, désolé")),
        ("refus r 7k3q9   plus   de   place\n\nce soir", cmd("decline", CODE, "plus de place ce soir")),
        ("NO 7K3Q9 no female staff", cmd("decline", CODE, "no female staff")),
        ("D 7K3Q9", cmd("decline", CODE)),
        ("D 7K3Q9 !!!", cmd("decline", CODE)),
        ("D 7K3Q9 (no beds)", cmd("decline", CODE, "(no beds)")),
        ("D code 7K3Q9 full", cmd("decline", CODE, "full")),
        ("D sorry R-7K3Q9 no beds", cmd("decline", CODE, "sorry no beds")),
        ("D WATER leak", cmd("decline", "WATER", "leak")),  # first word: a valid code
        ("NON pas de place", cmd("decline", None, "pas de place")),
        ("D no beds 7K3Q9", cmd("decline", None, "no beds 7K3Q9")),  # unmarked, not first
        ("ISSUE 7K3Q9 interpreter did not come", cmd("issue", CODE, "interpreter did not come")),
        ("issue R-7K3Q9: person left the shelter", cmd("issue", CODE, "person left the shelter")),
        ("PROBLÈME 7K3Q9 la personne est partie", cmd("issue", CODE, "la personne est partie")),
        ("probleme 7K3Q9", cmd("issue", CODE)),
        ("ISSUE no interpreter", cmd("issue", None, "no interpreter")),
        ("لا 7K3Q9 لا يوجد سرير", cmd("decline", CODE, "لا يوجد سرير")),
        ("لا7K3Q9 لا يوجد سرير", cmd("decline", CODE, "لا يوجد سرير")),
        ("لا، لا يوجد مكان", cmd("decline", None, "لا يوجد مكان")),
        ("D 7K3Q9 \u200fلا\u200f \x00beds", cmd("decline", CODE, "لا beds")),
        ("D 7K3Q9 😞 full", cmd("decline", CODE, "😞 full")),
        ("ISSUE 7K3Q9 room ٣ flooded", cmd("issue", CODE, "room ٣ flooded")),  # digits kept
    ],
)
def test_texts(body: str, expected: SmsCommand) -> None:
    assert parse_sms(body) == expected


def test_text_only_for_declines_and_issues() -> None:
    assert parse_sms("A 7K3Q9 thanks, we will call").text is None
    assert parse_sms("DONE 7K3Q9 all went well").text is None
    assert parse_sms("OK 7K3Q9 ongoing").text is None


def test_long_text_is_cut_at_500() -> None:
    body = "D 7K3Q9 " + "word " * 400
    result = parse_sms(body)
    assert (result.action, result.code) == ("decline", CODE)
    assert result.text is not None and len(result.text) == MAX_TEXT_LENGTH - 1  # trailing space cut
    assert result.text.startswith("word word")
    assert len(parse_sms("ISSUE 7K3Q9 " + "x" * 5000).text or "") == MAX_TEXT_LENGTH


# --- Arabic --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, expected",
    [
        ("نعم 7K3Q9", cmd("accept", CODE)),
        ("نعم7K3Q9", cmd("accept", CODE)),
        ("نعمR-7K3Q9", cmd("accept", CODE)),
        ("نعم r7k3q9", cmd("accept", CODE)),
        ("نعم ٧K٣Q٩", cmd("accept", CODE)),  # Arabic-Indic digits
        ("نعم٧K٣Q٩", cmd("accept", CODE)),
        ("نعم ۷K۳Q۹", cmd("accept", CODE)),  # Extended Arabic-Indic (Persian/Urdu keyboards)
        ("نَعَمْ 7K3Q9", cmd("accept", CODE)),  # diacritics
        ("نـــعـــم 7K3Q9", cmd("accept", CODE)),  # tatweel
        ("\u200fنعم\u200f 7K3Q9", cmd("accept", CODE)),  # RTL marks
        ("\u202bنعم 7K3Q9\u202c", cmd("accept", CODE)),  # RTL embedding
        ("نعم", cmd("accept")),
        ("نعم، شكرا", cmd("accept")),
        ("لا 7K3Q9", cmd("decline", CODE)),
        ("لا7K3Q9", cmd("decline", CODE)),
        ("ﻻ 7K3Q9", cmd("decline", CODE)),  # lam-alef ligature
        ("لاَ ٧K٣Q٩", cmd("decline", CODE)),
        ("لا", cmd("decline")),
        ("مساعدة", cmd("help")),
        ("مُسَاعَدَة", cmd("help")),
        ("مســاعــدة", cmd("help")),
        ("مساعده", cmd("help")),  # ha for ta marbuta, as often typed
        ("مساعدة 7K3Q9", cmd("help", CODE)),
        ("شكرا نعم 7K3Q9", cmd("unknown")),
        ("لاشكرا", cmd("unknown")),
    ],
)
def test_arabic(body: str, expected: SmsCommand) -> None:
    assert parse_sms(body) == expected


# --- robustness ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        "", " ", "\x00", "\x00" * 2000, "\ud800", "A \ud800 7K3Q9", "\udfff\ud800", "\u200f" * 50,
        "\ufeff", "🙂" * 1700, "x" * 1600, "A " * 1000, "D 7K3Q9 " + "🙂" * 1700, "ﷺ" * 3000,
        "\ufdfa" * 3000, "\u0301" * 100, "a\u0301" * 100, "\x1b[31mA 7K3Q9", "\r\n\t\v\f",
        "\U0010ffff", "\ue000 A", "نعم" + "\u064e" * 500,
    ],
)
def test_hostile_inputs_do_not_raise(body: str) -> None:
    result = parse_sms(body)
    assert result.action in ACTIONS
    assert result.text is None or len(result.text) <= MAX_TEXT_LENGTH
    normalise_code(body)


def test_surrogates_and_controls_are_ignored() -> None:
    assert parse_sms("A\ud800 7K3Q9") == cmd("accept", CODE)
    assert parse_sms("\x00A\x00 7K3Q9\x00") == cmd("accept", CODE)
    assert parse_sms("A 7K3\u200bQ9") == cmd("accept", CODE)  # zero-width space removed


def test_not_a_string() -> None:
    assert parse_sms(None) == cmd("unknown")  # type: ignore[arg-type]
    assert parse_sms(42) == cmd("unknown")  # type: ignore[arg-type]
    assert parse_sms(b"A 7K3Q9") == cmd("accept", CODE)  # type: ignore[arg-type]
    assert normalise_code(None) is None  # type: ignore[arg-type]


def test_result_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_sms("A 7K3Q9").action = "decline"  # type: ignore[misc]


# --- properties ----------------------------------------------------------------------------
ARABIC = "".join(chr(c) for c in range(0x0600, 0x0700))
SPACES = " \t\n\r\u00a0\u2003\u3000"
MARKS = "\u200e\u200f\u061c\u200b\ufeff\u202a\u202b\u202c\u2066\u2069"
PUNCT = ".,;:!?-–—()[]{}\"'’«»…*~/|_+=<>@%&^،؛؟"
EMOJI = "🙂👍😞🏥🚑❤️🇲🇦👨‍👩‍👧"
CONTROLS = "".join(chr(c) for c in range(0x20)) + "\x7f\x85"

any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=2000),  # every category, surrogates
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.text(st.sampled_from(ARABIC + SPACES + MARKS + "٧٣"), max_size=200),
    st.text(st.sampled_from(EMOJI + CONTROLS + MARKS + SPACES), max_size=200),
    st.text(st.sampled_from(CODE_ALPHABET + CODE_ALPHABET.lower() + "RrAaDd#-: " + PUNCT), max_size=60),
    st.builds(
        lambda k, s, c, t: k + s + c + t,
        st.sampled_from([w for w, _ in KEYWORD_ACTIONS] + ["", "r", "#"]),
        st.text(st.sampled_from(SPACES + MARKS + PUNCT + CONTROLS), max_size=5),
        st.text(st.sampled_from(CODE_ALPHABET + FORBIDDEN + "٠١٢٣٤٥٦٧٨٩rR-"), max_size=8),
        st.text(st.characters(exclude_categories=()), max_size=2000),
    ),
)


def check_invariants(result: SmsCommand | CapacityCommand) -> None:
    if isinstance(result, CapacityCommand):  # FULL, OPEN, LINK: tests/starter/test_sms_capacity.py
        assert result.action in ("full", "open", "link")
        assert result.service is None or result.service in SERVICES
        assert result.duration is None or (result.action == "full" and result.problem is None)
        return
    assert isinstance(result, SmsCommand)
    assert result.action in ACTIONS
    if result.code is not None:
        assert len(result.code) == CODE_LENGTH
        assert set(result.code) <= set(CODE_ALPHABET)
        assert normalise_code(result.code) == result.code
    if result.text is not None:
        assert 0 < len(result.text) <= MAX_TEXT_LENGTH
        assert result.text == result.text.strip()
        assert result.action in ("decline", "issue")
    if result.action == "unknown":
        assert result.code is None and result.text is None
    if result.decline_code is not None:
        assert result.action == "decline" and result.decline_code in DECLINE_CODES
    if result.unknown_decline_code:
        assert result.action == "decline" and result.decline_code is None


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_text)
def test_any_text_never_raises(body: str) -> None:
    result = parse_sms(body)
    check_invariants(result)
    assert parse_sms(body) == result  # deterministic
    code = normalise_code(body)
    assert code is None or (len(code) == CODE_LENGTH and set(code) <= set(CODE_ALPHABET))


codes = st.text(st.sampled_from(CODE_ALPHABET), min_size=CODE_LENGTH, max_size=CODE_LENGTH)
# Between a Latin keyword and the code there must be a real separator (else: one word).
separator_chars = SPACES + PUNCT
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@st.composite
def written_code(draw, code: str) -> str:
    """`code` as a partner may type it: any case, some digits Arabic-Indic, an R- or # prefix."""
    lower, indic = draw(st.integers(0, 2**CODE_LENGTH - 1)), draw(st.integers(0, 2**CODE_LENGTH - 1))
    chars = [c.lower() if lower >> i & 1 else c for i, c in enumerate(code)]
    chars = [c.translate(ARABIC_INDIC) if indic >> i & 1 else c for i, c in enumerate(chars)]
    prefix = draw(st.sampled_from(["", "R-", "r-", "R ", "R", "r", "#", "R - ", "R–", "#R-", "R:"]))
    return prefix + "".join(chars)


def randomly_cased(draw, word: str) -> str:
    lower = draw(st.integers(0, 2 ** len(word) - 1))
    return "".join(c.lower() if lower >> i & 1 else c.upper() for i, c in enumerate(word))


@st.composite
def separator(draw, required: bool = True, apostrophes: bool = True) -> str:
    """Spaces and punctuation; `apostrophes=False` after D, where "D'K…" is a French elision."""
    drop = str.maketrans("", "", "" if apostrophes else "'’")
    noise = st.text(st.sampled_from((SPACES + PUNCT + MARKS).translate(drop)), max_size=4)
    middle = draw(st.sampled_from(separator_chars.translate(drop))) if required else ""
    return draw(noise) + middle + draw(noise)


@settings(max_examples=500, deadline=None)
@given(data=st.data(), code=codes, keyword=st.sampled_from(ACCEPT_WORDS))
def test_accept_keyword_and_code_in_any_dress(data, code: str, keyword: str) -> None:
    arabic = keyword == "نعم"
    body = (
        data.draw(st.text(st.sampled_from(SPACES + MARKS + "»>*"), max_size=4))
        + randomly_cased(data.draw, keyword)
        + data.draw(separator(required=not arabic))
        + data.draw(written_code(code))
        + data.draw(st.text(st.sampled_from(SPACES + PUNCT + MARKS + EMOJI), max_size=5))
        + data.draw(st.sampled_from(["", " merci", " thanks 👍", " شكرا", "\nOK"]))
    )
    assert parse_sms(body) == cmd("accept", code), body


@settings(max_examples=300, deadline=None)
@given(data=st.data(), code=codes, word_action=st.sampled_from(KEYWORD_ACTIONS))
def test_every_keyword_and_code(data, code: str, word_action: tuple[str, str]) -> None:
    word, action = word_action
    if action == "stop":
        return  # CANCEL/END/QUIT with a code are "unknown" by design
    body = (
        randomly_cased(data.draw, word)
        + data.draw(
            separator(required=word not in ("نعم", "لا", "مساعدة"), apostrophes=word != "D")
        )
        + data.draw(written_code(code))
    )
    assert parse_sms(body) == cmd(action, code), body


reason_words = st.sampled_from([
    "no", "beds", "tonight", "pas", "de", "place", "désolé", "l'équipe", "full", "until", "Monday",
    "لا", "يوجد", "سرير", "٣", "10h30", "WATER", "7K3Q9", "A", "D", "STOP", "😞", "(maybe)", "x" * 60,
])


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    code=codes,
    keyword_action=st.sampled_from(
        [(w, "decline") for w in DECLINE_WORDS] + [("ISSUE", "issue"), ("PROBLÈME", "issue")]
    ),
    words=st.lists(reason_words, min_size=1, max_size=60),
    gaps=st.sampled_from([" ", "  ", "\n", " \t "]),
)
def test_reason_follows_the_code(data, code, keyword_action, words, gaps) -> None:
    keyword, action = keyword_action
    reason = gaps.join(words)
    after_code = data.draw(st.sampled_from([" ", ": ", " - ", "\n"]))
    body = keyword + " " + data.draw(written_code(code)) + after_code + reason
    decline_code = None
    if action == "decline" and words[0] == "٣":  # a number first: the decline's reason code
        decline_code, reason = 3, gaps.join(words[1:])
    expected = " ".join(reason.split())[:MAX_TEXT_LENGTH].rstrip() or None
    assert parse_sms(body) == cmd(action, code, expected, decline_code), body


# Letters that cannot spell any keyword (nor, in Arabic, any part of one).
SAFE_LATIN = "bilzsoBILZSO"
SAFE_ARABIC = "بتثجحخذرزشصضطظغفقكوي"
assert not any(set(w.upper()) <= set(SAFE_LATIN.upper()) for w, _ in KEYWORD_ACTIONS)
noise = st.text(
    st.sampled_from(SAFE_LATIN + SAFE_ARABIC + "0123456789٠١٢٣" + SPACES + MARKS + PUNCT + EMOJI
                    + CONTROLS + "中文字бвгд"),
    max_size=300,
)


@settings(max_examples=1000, deadline=None)
@given(noise)
def test_noise_without_a_keyword_is_unknown(body: str) -> None:
    assert parse_sms(body) == cmd("unknown")


@settings(max_examples=500, deadline=None)
@given(
    first=st.sampled_from(["hello", "bonjour", "merci", "thanks", "salam", "شكرا", "مرحبا", "7K3Q9",
                           "R-7K3Q9", "#7K3Q9", "D'accord", "Accord", "Okay", "Yesterday", "Nope"]),
    rest=st.text(st.characters(exclude_categories=()), max_size=300),
)
def test_a_keyword_that_is_not_first_is_no_command(first: str, rest: str) -> None:
    assert parse_sms(first + " " + rest) == cmd("unknown")


@settings(max_examples=300, deadline=None)
@given(st.data(), codes)
def test_normalise_code_round_trip(data, code: str) -> None:
    written = data.draw(written_code(code))
    padded = data.draw(st.text(st.sampled_from(SPACES + MARKS + "()."), max_size=3)) + written
    assert normalise_code(padded) == code
    assert normalise_code(code + data.draw(st.sampled_from(FORBIDDEN))) is None


# --- decline reason codes: `D CODE n [reason]` ---------------------------------------------
@pytest.mark.parametrize(
    "body, expected",
    [
        # English, French, Arabic keywords; the number right after the code
        ("D 7K3Q9 1", cmd("decline", CODE, None, 1)),
        ("D 7K3Q9 1 no beds tonight", cmd("decline", CODE, "no beds tonight", 1)),
        ("DECLINE R-7K3Q9 2", cmd("decline", CODE, None, 2)),
        ("decline r-7k3q9: 3 - too far", cmd("decline", CODE, "too far", 3)),
        ("NON 7K3Q9 4 pas de personnel féminin", cmd("decline", CODE, "pas de personnel féminin", 4)),
        ("REFUSE 7K3Q9 9 autre raison", cmd("decline", CODE, "autre raison", 9)),
        ("refusé 7k3q9 (1) complet", cmd("decline", CODE, "complet", 1)),
        ("لا 7K3Q9 ٣", cmd("decline", CODE, None, 3)),
        ("لا 7K3Q9 3 خارج المنطقة", cmd("decline", CODE, "خارج المنطقة", 3)),
        ("لا7K3Q9 ۴ لا يمكن", cmd("decline", CODE, "لا يمكن", 4)),  # Extended Arabic-Indic
        ("D 7K3Q9 ９", cmd("decline", CODE, None, 9)),  # full-width
        ("D 7K3Q9 #1", cmd("decline", CODE, None, 1)),
        ("D 7K3Q9 01", cmd("decline", CODE, None, 1)),
        ("D sorry R-7K3Q9 2 no", cmd("decline", CODE, "sorry no", 2)),
        # without a referral code: the sender's only pending item
        ("D 1", cmd("decline", None, None, 1)),
        ("NON 2 pas ce service", cmd("decline", None, "pas ce service", 2)),
        ("لا ٤", cmd("decline", None, None, 4)),
        ("لا1", cmd("decline", None, None, 1)),
        # a number that is not a reason code: flagged, so the webhook answers with the codes
        ("D 7K3Q9 5", cmd("decline", CODE, None, None, True)),
        ("D 7K3Q9 0 beds", cmd("decline", CODE, "beds", None, True)),
        ("NON 7K3Q9 12", cmd("decline", CODE, None, None, True)),
        ("لا 7K3Q9 ٧", cmd("decline", CODE, None, None, True)),
        ("D 7K3Q9 0612345678", cmd("decline", CODE, None, None, True)),
        ("D 12", cmd("decline", None, None, None, True)),
        # a time, a quantity or a word with digits is free text, not a code
        ("D 7K3Q9 10h30 full", cmd("decline", CODE, "10h30 full")),
        ("D 7K3Q9 10:30 full", cmd("decline", CODE, "10:30 full")),
        ("D 7K3Q9 3.5 km", cmd("decline", CODE, "3.5 km")),
        ("D 7K3Q9 12/05", cmd("decline", CODE, "12/05")),
        ("D 7K3Q9 2beds", cmd("decline", CODE, "2beds")),
        ("D 7K3Q9 no beds 1", cmd("decline", CODE, "no beds 1")),  # not first: text
        # a decline without a number stays valid, without a code
        ("D 7K3Q9 no beds", cmd("decline", CODE, "no beds")),
        # numbers are reason codes for declines only
        ("ISSUE 7K3Q9 3 people waiting", cmd("issue", CODE, "3 people waiting")),
        ("A 7K3Q9 1", cmd("accept", CODE)),
        ("DONE 7K3Q9 1", cmd("done", CODE)),
    ],
)
def test_decline_reason_codes(body: str, expected: SmsCommand) -> None:
    assert parse_sms(body) == expected


WRITTEN_DIGITS = {
    "ascii": str.maketrans("", ""),
    "arabic-indic": ARABIC_INDIC,
    "extended": str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"),
    "full-width": str.maketrans("0123456789", "０１２３４５６７８９"),
}


@settings(max_examples=500, deadline=None)
@given(
    data=st.data(),
    code=codes,
    keyword=st.sampled_from(DECLINE_WORDS),
    number=st.one_of(st.sampled_from(DECLINE_CODES), st.integers(0, 999)),
    digits=st.sampled_from(sorted(WRITTEN_DIGITS)),
    words=st.lists(reason_words, max_size=20),
)
def test_decline_code_and_reason_in_any_dress(data, code, keyword, number, digits, words) -> None:
    """`D CODE n [reason]` in the three languages' keywords: n is the code when it is one of the
    list, flagged otherwise; what follows n stays the free text."""
    reason = " ".join(words)
    written = str(number).translate(WRITTEN_DIGITS[digits])
    between = data.draw(st.sampled_from([" ", ": ", " - ", "\n", " #", " (", "  "]))
    after = data.draw(st.sampled_from([" ", ") ", " - ", "\n"]))
    body = (
        randomly_cased(data.draw, keyword)
        + data.draw(separator(required=keyword != "لا", apostrophes=keyword != "D"))
        + data.draw(written_code(code))
        + between
        + written
        + (after + reason if reason else data.draw(st.sampled_from(["", ".", " !", ")"])))
    )
    expected_text = " ".join(reason.split())[:MAX_TEXT_LENGTH].rstrip() or None
    valid = number in DECLINE_CODES
    result = parse_sms(body)
    assert result == cmd("decline", code, expected_text, number if valid else None, not valid), body
    check_invariants(result)


@settings(max_examples=300, deadline=None)
@given(code=codes, keyword=st.sampled_from(DECLINE_WORDS), words=st.lists(reason_words, min_size=1, max_size=20))
def test_a_decline_without_a_number_has_no_code(code, keyword, words) -> None:
    """A reason that does not start with a number is text only: decline_code None, no flag."""
    assume(not words[0].translate(ARABIC_INDIC).isdigit() and words[0] != "٣")
    body = f"{keyword} {code} " + " ".join(words)
    result = parse_sms(body)
    assert (result.action, result.code, result.decline_code, result.unknown_decline_code) == ("decline", code, None, False)
