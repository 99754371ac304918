"""Find and redact personal data and credentials in text, English and Chinese alike.

    from jielong.prep.pii import redact
    redact("寄信到 amy@example.com，或撥 0912-345-678")
    # ('寄信到 <EMAIL>，或撥 <PHONE>', {'email': 1, 'phone': 1})

Each kind becomes a typed placeholder (`PLACEHOLDERS`) and is counted:

- email            <EMAIL>
- phone            <PHONE>        Taiwan mobiles (09xx-xxx-xxx, +886 9…) and landlines
                                  ((0x) xxxx-xxxx, with a separator or parentheses); mainland
                                  China mobiles (1[3-9]x xxxx xxxx, +86); Hong Kong (+852 and
                                  8 digits); any other E.164 number written with its +country
- tw_id            <TW_ID>        Taiwan national ID: a letter, 1/2 (8/9: the new resident
                                  certificate), 8 digits; only when its check digit is right
- cn_id            <CN_ID>        mainland resident ID: 18 characters, a real date of birth,
                                  and the ISO 7064 MOD 11-2 check character
- credit_card      <CREDIT_CARD>  13-19 digits (spaces or hyphens allowed) starting 2-6 (the
                                  networks' ranges), Luhn-valid only
- ip               <IP>           IPv4 with valid octets; IPv6 (checked by `ipaddress`)
- private_key      <PRIVATE_KEY>  -----BEGIN … PRIVATE KEY----- blocks (to the END line, or,
                                  cut off, to the end of the key's base64 lines)
- hf_token         <HF_TOKEN>     hf_ + 34 or more letters/digits
- openai_key       <OPENAI_KEY>   sk-proj-/sk-svcacct-/sk-admin- + 20 or more, or sk- + 32 or
                                  more letters/digits
- anthropic_key    <ANTHROPIC_KEY> sk-ant-…
- aws_key_id       <AWS_KEY_ID>   AKIA/ASIA + 16 capitals/digits
- aws_secret       <AWS_SECRET>   a 40-character secret key, only after a label such as
                                  aws_secret_access_key= (the label stays)
- github_token     <GITHUB_TOKEN> ghp_/gho_/ghu_/ghs_/ghr_ + 36 or more, github_pat_…

Numbers that look right but fail their check (a Taiwan ID or a resident ID with a wrong
check digit, a card number that fails Luhn, an impossible date or octet) are kept: they are
not anyone's. Boundaries are ASCII-only on purpose, because Chinese text runs straight into
numbers ("電話0912345678") and a Han character counts as a word character to `re`.

When matches overlap, the earlier kind in `KINDS` wins (a key block before the digits inside
it, an ID before a card number), then the longer match.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PLACEHOLDERS = {
    "private_key": "<PRIVATE_KEY>",
    "anthropic_key": "<ANTHROPIC_KEY>",
    "openai_key": "<OPENAI_KEY>",
    "hf_token": "<HF_TOKEN>",
    "github_token": "<GITHUB_TOKEN>",
    "aws_key_id": "<AWS_KEY_ID>",
    "aws_secret": "<AWS_SECRET>",
    "email": "<EMAIL>",
    "cn_id": "<CN_ID>",
    "tw_id": "<TW_ID>",
    "credit_card": "<CREDIT_CARD>",
    "ip": "<IP>",
    "phone": "<PHONE>",
}
KINDS = tuple(PLACEHOLDERS)  # priority order, highest first
SECRET_KINDS = ("private_key", "anthropic_key", "openai_key", "hf_token", "github_token",
                "aws_key_id", "aws_secret")


@dataclass(frozen=True)
class Found:
    kind: str
    start: int
    end: int


# ------------------------------------------------------------------------------ validators

# Taiwan: the letter stands for a two-digit number (its region); I, O, W, X, Y, Z were added
# later, so they sit out of alphabetical order.
_TW_LETTERS = dict(zip("ABCDEFGHJKLMNPQRSTUVXYWZIO", range(10, 36), strict=True))


def tw_id_valid(s: str) -> bool:
    """A Taiwan ID (A123456789): the letter's number's tens + 9 × its units, then the nine
    digits weighted 8, 7, …, 1, 1, must sum to a multiple of 10."""
    if not re.fullmatch(r"[A-Z][1289]\d{8}", s):
        return False
    n = _TW_LETTERS[s[0]]
    total = n // 10 + 9 * (n % 10)
    total += sum(int(d) * w for d, w in zip(s[1:], (8, 7, 6, 5, 4, 3, 2, 1, 1), strict=True))
    return total % 10 == 0


_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)  # 2^(17-i) mod 11
_CN_CHECK = "10X98765432"


def cn_id_valid(s: str, today: datetime.date | None = None) -> bool:
    """A mainland resident ID: 6-digit region, a real birth date (1900 to today), 3 digits,
    and the ISO 7064 MOD 11-2 check character (0-9 or X)."""
    s = s.upper()
    if not re.fullmatch(r"[1-9]\d{16}[\dX]", s):
        return False
    try:
        born = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= (today or datetime.date.today()):
        return False
    return _CN_CHECK[sum(int(d) * w for d, w in zip(s, _CN_WEIGHTS, strict=False)) % 11] == s[17]


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(m: re.Match) -> bool:
    digits = re.sub(r"[ -]", "", m.group())
    if not 13 <= len(digits) <= 19 or not luhn_valid(digits):
        return False
    # An 18-digit run shaped like a resident ID (with or without a valid check character) is
    # an ID, not a card: leave it to `cn_id`, which keeps the ones that fail their check.
    return not (len(digits) == 18 == len(m.group()) and re.fullmatch(
        r"[1-8]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{4}", digits))


def _ipv6_ok(m: re.Match) -> bool:
    s = m.group()
    if s.count(":") < 2 or sum(c.isalnum() for c in s) < 2:
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _phone_ok(m: re.Match) -> bool:
    return 8 <= sum(c.isdigit() for c in m.group()) <= 15


# -------------------------------------------------------------------------------- patterns

_D = r"(?<![0-9])"      # no digit before
_DE = r"(?![0-9])"      # no digit after
_W = r"(?<![A-Za-z0-9_-])"  # token start: no ASCII word character or hyphen before
_WE = r"(?![A-Za-z0-9_-])"
_SEP = r"[-\s]?"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_DASHES = "-" * 5  # built, not written out, so no scanner mistakes this file for a key

Check = Callable[[re.Match], bool]
# (kind, pattern, the group to redact, a validator or None)
_PATTERNS: list[tuple[str, re.Pattern, int | str, Check | None]] = [
    ("private_key", re.compile(
        _DASHES + r"BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY((?: BLOCK)?)" + _DASHES + r".*?"
        + _DASHES + r"END \1PRIVATE KEY\2" + _DASHES, re.S), 0, None),
    ("private_key", re.compile(  # cut off before its END line
        _DASHES + r"BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?" + _DASHES
        + r"(?:\n[A-Za-z0-9-]+: [^\n]*)*(?:\s*\n[A-Za-z0-9+/=]{8,})+"), 0, None),
    ("anthropic_key", re.compile(_W + r"sk-ant-[A-Za-z0-9_-]{20,}" + _WE), 0, None),
    ("openai_key", re.compile(_W + r"sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}|"
                              r"[A-Za-z0-9]{32,})" + _WE), 0, None),
    ("hf_token", re.compile(_W + r"hf_[A-Za-z0-9]{34,}" + _WE), 0, None),
    ("github_token", re.compile(_W + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"
                                + _WE), 0, None),
    ("aws_key_id", re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"), 0,
     None),
    ("aws_secret", re.compile(
        r"(?i:aws[_ .-]?secret(?:[_ .-]?access)?[_ .-]?key(?:[_ .-]?id)?|secret[_ .-]?access[_ .-]?key)"
        r"[\"']?\s*(?:[:=]|=>)\s*[\"']?(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"), "v", None),
    ("email", re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                         r"\.[A-Za-z]{2,}(?![A-Za-z0-9-])"), 0, None),
    ("cn_id", re.compile(_D + r"[1-8]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                         r"\d{3}[0-9Xx](?![0-9A-Za-z])"), 0, lambda m: cn_id_valid(m.group())),
    ("tw_id", re.compile(r"(?<![A-Za-z0-9])[A-Z][1289]\d{8}" + _DE), 0,
     lambda m: tw_id_valid(m.group())),
    ("credit_card", re.compile(_D + r"[2-6]\d{3}(?:[ -]?\d){9,15}" + _DE), 0, _card_ok),
    ("ip", re.compile(r"(?<![0-9.])" + rf"(?:{_OCTET}\.){{3}}{_OCTET}" + r"(?!\.?[0-9])"), 0, None),
    ("ip", re.compile(r"(?<![0-9A-Za-z:.])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:]*"
                      rf"(?:{_OCTET}\.(?:{_OCTET}\.){{2}}{_OCTET})?(?![0-9A-Za-z:])"), 0, _ipv6_ok),
    # Taiwan mobile: 09xx-xxx-xxx, +886 9xx xxx xxx
    ("phone", re.compile(r"(?<![0-9+])(?:\+886" + _SEP + r"|0)9\d{2}" + _SEP + r"\d{3}" + _SEP
                         + r"\d{3}" + _DE), 0, None),
    # Taiwan landline: (02) 2345-6789, 02-2345-6789, 037-123-456, +886 2 2345 6789
    ("phone", re.compile(r"(?<![0-9+])(?:\(0[2-8]\d{0,2}\)\s?|0[2-8]\d{0,2}-|\+886" + _SEP
                         + r"\(?[2-8]\d{0,2}\)?" + _SEP + r")\d{3,4}" + _SEP + r"\d{3,4}" + _DE), 0,
     None),
    # mainland China mobile: 138 1234 5678, +86 138-1234-5678
    ("phone", re.compile(r"(?<![0-9+])(?:\+86" + _SEP + r")?1[3-9]\d" + _SEP + r"\d{4}" + _SEP
                         + r"\d{4}" + _DE), 0, None),
    # Hong Kong: +852 2345 6789
    ("phone", re.compile(r"\+852" + _SEP + r"[2-9]\d{3}" + _SEP + r"\d{4}" + _DE), 0, None),
    # any E.164 number written with its country code: +44 20 7946 0958, +1 (415) 555-2671
    ("phone", re.compile(r"(?<![0-9A-Za-z+])\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\)|[ .-]?\d{1,5}){2,6}"
                         + _DE), 0, _phone_ok),
]


# ----------------------------------------------------------------------------------- API


def find_pii(text: str, kinds: Iterable[str] | None = None) -> list[Found]:
    """The PII and secrets in `text`, sorted and not overlapping. `kinds` limits the search
    (default: every kind in `KINDS`)."""
    wanted = set(KINDS if kinds is None else kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    found = []
    for kind, pattern, group, check in _PATTERNS:
        if kind not in wanted:
            continue
        for m in pattern.finditer(text):
            if check is None or check(m):
                found.append((KINDS.index(kind), m.start(group), m.end(group), kind))
    # Greedy by priority, then length: a later candidate that overlaps a kept one is dropped.
    found.sort(key=lambda f: (f[0], f[1] - f[2], f[1]))
    starts: list[int] = []
    kept: list[Found] = []
    for _, start, end, kind in found:
        i = bisect_left(starts, start)
        if (i > 0 and kept[i - 1].end > start) or (i < len(kept) and kept[i].start < end):
            continue
        starts.insert(i, start)
        kept.insert(i, Found(kind, start, end))
    return kept


def redact(text: str, kinds: Iterable[str] | None = None) -> tuple[str, dict[str, int]]:
    """(`text` with each finding replaced by its placeholder, {kind: count})."""
    found = find_pii(text, kinds)
    if not found:
        return text, {}
    parts, pos = [], 0
    for f in found:
        parts += [text[pos:f.start], PLACEHOLDERS[f.kind]]
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), dict(Counter(f.kind for f in found))


def redact_all(value, kinds: Iterable[str] | None = None, counts: Counter | None = None):
    """`value` with every string in it redacted: a string, or lists and dicts of them (dict
    keys too), nested; other values as they are. Adds what it found to `counts`."""
    if isinstance(value, str):
        out, found = redact(value, kinds)
        if found and counts is not None:
            counts.update(found)
        return out
    if isinstance(value, dict):
        return {redact_all(k, kinds, counts): redact_all(v, kinds, counts) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_all(v, kinds, counts) for v in value)
    return value

