"""Text normalisation: English sentence -> transcript form.

A transcript holds lower-case letters a-z, apostrophes inside words and single
spaces.  Numbers and common abbreviations are spelled out so that the text the
TTS engine speaks and the transcript the model learns are the same words.
Anything that cannot be turned into that form cleanly (URLs, code, leftover
symbols, foreign letters, letter-by-letter acronyms) is rejected with ``None``
rather than guessed, because a wrong transcript is worse than a missing one.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

__all__ = ["normalize_text", "word_count"]

# Abbreviations spelled out; keys are lower case, without the trailing dot.
# Only unambiguous-enough ones: "st" is read as "saint" before a capitalised
# name and as "street" after one (see _expand_st).
_ABBREVIATIONS: dict[str, str] = {
    "mr": "mister",
    "mrs": "missus",
    "ms": "miss",
    "dr": "doctor",
    "prof": "professor",
    "jr": "junior",
    "sr": "senior",
    "gen": "general",
    "gov": "governor",
    "sen": "senator",
    "rep": "representative",
    "capt": "captain",
    "lt": "lieutenant",
    "sgt": "sergeant",
    "col": "colonel",
    "rev": "reverend",
    "mt": "mount",
    "ave": "avenue",
    "etc": "et cetera",
    "vs": "versus",
    "approx": "approximately",
    "dept": "department",
    "govt": "government",
    "inc": "incorporated",
    "ltd": "limited",
    "co": "company",
    "corp": "corporation",
    "jan": "january",
    "feb": "february",
    "aug": "august",
    "sept": "september",
    "oct": "october",
    "nov": "november",
    "dec": "december",
}
# Abbreviations that are also ordinary words: expanded only with a dot.
_DOT_ONLY = {"co", "gen", "rep", "col", "rev", "sen", "jan", "dec", "gov", "inc"}

_MULTI_DOT = [
    (re.compile(r"\be\.\s?g\.", re.I), " for example "),
    (re.compile(r"\bi\.\s?e\.", re.I), " that is "),
    (re.compile(r"\ba\.\s?m\.", re.I), " a m "),
    (re.compile(r"\bp\.\s?m\.", re.I), " p m "),
    (re.compile(r"\bu\.\s?s\.\s?a\.", re.I), " u s a "),
    (re.compile(r"\bu\.\s?s\.", re.I), " u s "),
]

_REJECT = re.compile(
    r"(https?:|www\.|ftp:|\.com\b|\.org\b|\.edu\b|\.net\b|@|[\\{}<>\[\]|^~`_#*=/]"
    r"|\w\(|::|->|\+\+|;\s*$)",
    re.I,
)
# Checked after numbers/abbreviations are expanded: file names, hosts, dotted identifiers.
_DOTTED = re.compile(r"[A-Za-z]\.[A-Za-z]")
# Acronyms (FBI, NASA) are spelled or guessed by the TTS differently from their lower-case form.
_ACRONYM = re.compile(r"\b[A-Z]{2,5}s?\b")
# Vowel-less words that are nonetheless read as words, not spelled out.
_NO_VOWEL_OK = {"hmm", "hmmm", "shh", "psst", "brr", "tsk", "nth", "pfft", "grr", "zzz", "mm", "sh"}
_SINGLE_LETTER_OK = {"a", "i", "o"}


def _say_int(n: int) -> str:
    return num2words(n)


def _say_year_or_int(digits: str) -> str:
    """Four-digit numbers without separators are usually years: 1984 -> nineteen eighty four."""
    n = int(digits)
    if len(digits) == 4 and not digits.startswith("0") and (1100 <= n <= 1999 or 2010 <= n <= 2099):
        return num2words(n, to="year")
    if digits.startswith("0") and len(digits) > 1:
        return " ".join(num2words(int(d)) for d in digits)
    return num2words(n)


def _money(m: re.Match[str]) -> str:
    whole = int(m.group(1).replace(",", ""))
    cents = m.group(2)
    unit = " dollar" if whole == 1 else " dollars"
    out = _say_int(whole) + unit
    if cents:
        c = int(cents)
        if c:
            out += " and " + _say_int(c) + (" cent" if c == 1 else " cents")
    return " " + out + " "


def _decimal(m: re.Match[str]) -> str:
    whole, frac = m.group(1).replace(",", ""), m.group(2)
    return " " + _say_int(int(whole)) + " point " + " ".join(num2words(int(d)) for d in frac) + " "


def _ordinal(m: re.Match[str]) -> str:
    return " " + num2words(int(m.group(1)), to="ordinal") + " "


def _time(m: re.Match[str]) -> str:
    h, mi = int(m.group(1)), int(m.group(2))
    if h > 24 or mi > 59:
        return m.group(0)
    if mi == 0:
        return f" {_say_int(h)} o'clock "
    minutes = ("oh " + _say_int(mi)) if mi < 10 else _say_int(mi)
    return f" {_say_int(h)} {minutes} "


def _decade(m: re.Match[str]) -> str:
    """1960s -> nineteen sixties; 60s -> sixties."""
    digits = m.group(1)
    word = num2words(int(digits), to="year") if len(digits) == 4 else num2words(int(digits))
    word = word.replace("-", " ")
    if word.endswith("y"):
        return " " + word[:-1] + "ies "
    return " " + word + "s "


def _expand_numbers(s: str) -> str:
    s = re.sub(r"\$(\d[\d,]*)(?:\.(\d\d))?\b", _money, s)
    s = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: f" {m.group(1)} percent ", s)
    s = re.sub(r"\b(\d{1,2}):(\d\d)\b", _time, s)
    s = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", _ordinal, s, flags=re.I)
    s = re.sub(r"\b'?(\d{2}|\d{4})'?s\b", _decade, s)
    s = re.sub(r"\b(\d{1,3}(?:,\d{3})+|\d+)\.(\d+)\b", _decimal, s)
    s = re.sub(r"\b(\d{1,3}(?:,\d{3})+)\b", lambda m: " " + _say_int(int(m.group(1).replace(",", ""))) + " ", s)
    s = re.sub(r"\b(\d+)\b", lambda m: " " + _say_year_or_int(m.group(1)) + " ", s)
    return s


def _expand_abbreviations(s: str) -> str:
    for pat, rep in _MULTI_DOT:
        s = pat.sub(rep, s)

    # "St." before a capitalised word is a saint, after one it is a street.
    s = re.sub(r"\bSt\.?\s+(?=[A-Z])", " saint ", s)
    s = re.sub(r"(?<=[a-z])\s+St\.?(?=\W|$)", " street", s)

    def repl(m: re.Match[str]) -> str:
        word, dot = m.group(1), m.group(2)
        key = word.lower()
        if key in _ABBREVIATIONS and (dot or key not in _DOT_ONLY):
            # "co" etc. without a dot are real words; keep them.
            return _ABBREVIATIONS[key] + " "
        return m.group(0)

    s = re.sub(r"\b([A-Za-z]+)(\.)?(?=\W|$)", repl, s)
    s = s.replace("&", " and ").replace("%", " percent ").replace("+", " plus ")
    return s


def normalize_text(s: str) -> str | None:
    """Return the transcript form of one English sentence, or None if it is not clean."""
    if not s or not s.strip():
        return None
    s = unicodedata.normalize("NFKC", s)
    # Typographic quotes and dashes to ASCII before the ASCII-only check.
    s = (
        s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
        .replace("\u2013", "-").replace("\u2014", " - ").replace("\u2026", "...")
    )
    if any(ord(c) > 127 for c in s):
        return None
    if _REJECT.search(s):
        return None

    s = _expand_abbreviations(s)
    s = _expand_numbers(s)
    if re.search(r"\d", s) or _DOTTED.search(s):
        return None
    letters = re.findall(r"[A-Za-z]+", s)
    shouted = sum(w.isupper() for w in letters) > 0.6 * max(1, len(letters))
    if not shouted and _ACRONYM.search(s):
        return None

    s = s.lower()
    # Hyphens and dashes join or separate words: "well-known" -> "well known".
    s = s.replace("-", " ")
    # Punctuation that only carries prosody becomes a space.
    s = re.sub(r"[.,;:!?\"()]", " ", s)
    # Apostrophes survive only inside a word: don't, o'clock, rock'n'roll.
    s = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", s)
    if re.search(r"[^a-z' ]", s):
        return None

    words = s.split()
    if not words:
        return None
    for w in words:
        bare = w.replace("'", "")
        if not bare:
            return None
        if len(bare) == 1 and bare not in _SINGLE_LETTER_OK and "'" not in w:
            # Isolated letters are usually initials or list labels the TTS spells oddly.
            return None
        if len(bare) >= 2 and not re.search(r"[aeiouy]", bare) and bare not in _NO_VOWEL_OK:
            # Vowel-less tokens (tv, ibm, mph) are spelled letter by letter by the TTS.
            return None
    return " ".join(words)


def word_count(s: str) -> int:
    """Number of space-separated words in a normalised transcript."""
    return len(s.split())
