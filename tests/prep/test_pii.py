"""PII and credential redaction: every kind gets its placeholder and its count; numbers that
fail their check digit, Luhn or date are kept. Every secret here is synthetic and built from
pieces, so no secret-looking literal sits in the repository (the last test checks that)."""

from pathlib import Path

import pytest

from jielong.prep import pii
from jielong.prep.pii import cn_id_valid, find_pii, luhn_valid, redact, tw_id_valid

DASHES = "-" * 5
KEY_WORDS = "PRIVATE" + " KEY"  # pieces, so no scanner reads a key header here


def test_emails():
    out, counts = redact("寄信到amy.lee+news@example.com.tw，或 Bob_99@mail.example.org.")
    assert out == "寄信到<EMAIL>，或 <EMAIL>." and counts == {"email": 2}
    assert redact("not an email: user@localhost, @handle, a@b")[1] == {}


@pytest.mark.parametrize("number", [
    "0912-345-678", "0912345678", "0912 345 678", "+886 912 345 678", "+886-912-345-678",
    "+886912345678",                                            # Taiwan mobile
    "(02) 2345-6789", "02-2345-6789", "04-2345-6789", "+886 2 2345 6789",  # Taiwan landline
    "13812345678", "138 1234 5678", "+86 138 1234 5678", "+86-13812345678",  # mainland mobile
    "+852 2345 6789", "+852 91234567",                          # Hong Kong
    "+44 20 7946 0958", "+1 (415) 555-2671", "+81 3-1234-5678",  # E.164
])
def test_phones(number):
    out, counts = redact(f"電話{number}，謝謝")
    assert out == "電話<PHONE>，謝謝" and counts == {"phone": 1}


def test_not_phones():
    for text in ["訂單編號 20240101123456", "ISBN 978-3-16-148410-0", "日期 2024-05-01",
                 "金額 NT$12,345,678", "12345678", "call 555-1234"]:
        assert redact(text) == (text, {}), text


def test_taiwan_id_check_digit():
    assert tw_id_valid("A123456789") and tw_id_valid("F131104093")
    assert not tw_id_valid("A123456788") and not tw_id_valid("A323456789")
    out, counts = redact("身分證A123456789；錯一碼A123456788；F131104093。")
    assert out == "身分證<TW_ID>；錯一碼A123456788；<TW_ID>。" and counts == {"tw_id": 2}


def test_mainland_id_check_and_date():
    assert cn_id_valid("11010519491231002X") and cn_id_valid("440524199001010018") and cn_id_valid("310115200002291235")
    assert not cn_id_valid("110105194912310021")  # wrong check character
    assert not cn_id_valid("110105194902300028")  # 30 February
    assert not cn_id_valid("110105299912310025")  # born in the future
    out, counts = redact("身份证11010519491231002x，错的110105194912310021，不存在的日期110105194902300028")
    assert out == "身份证<CN_ID>，错的110105194912310021，不存在的日期110105194902300028"
    assert counts == {"cn_id": 1}


def test_credit_cards_luhn_only():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    text = ("visa 4111 1111 1111 1111, mc 5555-5555-5555-4444, amex 3782 822463 10005, "
            "unionpay 6212345678901232, bad 4111 1111 1111 1112, short 4111 1111 1111")
    out, counts = redact(text)
    assert out == ("visa <CREDIT_CARD>, mc <CREDIT_CARD>, amex <CREDIT_CARD>, "
                   "unionpay <CREDIT_CARD>, bad 4111 1111 1111 1112, short 4111 1111 1111")
    assert counts == {"credit_card": 4}


def test_ip_addresses():
    text = ("server 192.168.1.254 and 8.8.8.8. v6 2001:db8::8a2e:370:7334, fe80::1ff:fe23:4567:890a "
            "and [2001:db8::1]:443. Not: 999.1.1.1, 1.2.3, 256.1.1.1, 12:30:45, std::cout, "
            "00:1A:2B:3C:4D:5E")
    out, counts = redact(text)
    assert out == ("server <IP> and <IP>. v6 <IP>, <IP> and [<IP>]:443. Not: 999.1.1.1, 1.2.3, "
                   "256.1.1.1, 12:30:45, std::cout, 00:1A:2B:3C:4D:5E")
    assert counts == {"ip": 5}


# Synthetic, format-valid credentials, assembled so the source holds none of them whole.
HF = "hf" + "_" + "a" * 34
OPENAI = "sk" + "-" + "A1b2" * 12
OPENAI_PROJ = "sk" + "-proj-" + "Xy9_" * 10
ANTHROPIC = "sk" + "-ant-" + "api03-" + "Zz8-" * 12
AWS_ID = "AK" + "IA" + "EXAMPLE" + "0" * 9
AWS_40 = "abcd/EFGH+1234" * 2 + "x" * 12  # 40 characters
GITHUB = ["gh" + p + "_" + "B3" * 18 for p in "pousr"] + ["github" + "_pat_" + "11AB" * 6 + "_" + "cd" * 20]


def test_credentials_each_with_its_placeholder():
    cases = [
        (f"token={HF}", "token=<HF_TOKEN>", "hf_token"),
        (f"OPENAI_API_KEY={OPENAI}", "OPENAI_API_KEY=<OPENAI_KEY>", "openai_key"),
        (f"key: {OPENAI_PROJ}", "key: <OPENAI_KEY>", "openai_key"),
        (f"anthropic {ANTHROPIC}.", "anthropic <ANTHROPIC_KEY>.", "anthropic_key"),
        (f"id {AWS_ID} ok", "id <AWS_KEY_ID> ok", "aws_key_id"),
        (f"aws_secret_access_key = {AWS_40}", "aws_secret_access_key = <AWS_SECRET>", "aws_secret"),
        (f'"SecretAccessKey": "{AWS_40}"', '"SecretAccessKey": "<AWS_SECRET>"', "aws_secret"),
    ] + [(f"金鑰 {g}。", "金鑰 <GITHUB_TOKEN>。", "github_token") for g in GITHUB]
    for text, expected, kind in cases:
        assert redact(text) == (expected, {kind: 1}), text
    # An unlabelled 40-character string is not a secret key; a too-short token is not a token.
    assert redact(AWS_40) == (AWS_40, {})
    assert redact("hf" + "_" + "a" * 20)[1] == {}
    assert redact("risk-management-strategies-for-everyone")[1] == {}


def test_private_key_blocks():
    body = "\n".join(["MIIEow" + "A" * 58, "b" * 64, "c" * 20 + "=="])
    for kind in ("RSA ", "EC ", "OPENSSH ", ""):
        block = f"{DASHES}BEGIN {kind}{KEY_WORDS}{DASHES}\n{body}\n{DASHES}END {kind}{KEY_WORDS}{DASHES}"
        assert redact(f"key:\n{block}\nthe end") == ("key:\n<PRIVATE_KEY>\nthe end", {"private_key": 1})
    pgp = f"{DASHES}BEGIN PGP {KEY_WORDS} BLOCK{DASHES}\n\n{body}\n{DASHES}END PGP {KEY_WORDS} BLOCK{DASHES}"
    assert redact(pgp) == ("<PRIVATE_KEY>", {"private_key": 1})
    cut = f"pasted:\n{DASHES}BEGIN RSA {KEY_WORDS}{DASHES}\n{body}\n\nThat was all."
    assert redact(cut) == ("pasted:\n<PRIVATE_KEY>\n\nThat was all.", {"private_key": 1})
    # A public key, or a BEGIN line with nothing after it, stays.
    public = f"{DASHES}BEGIN PUBLIC KEY{DASHES}\n{body}\n{DASHES}END PUBLIC KEY{DASHES}"
    assert redact(public)[1] == {}


def test_mixed_document_and_overlaps():
    text = (f"聯絡 amy@example.com 或 0912-345-678；身分證 A123456789；卡號 4111-1111-1111-1111；"
            f"主機 10.0.0.1；{HF}；身份证 11010519491231002X。")
    out, counts = redact(text)
    assert out == ("聯絡 <EMAIL> 或 <PHONE>；身分證 <TW_ID>；卡號 <CREDIT_CARD>；主機 <IP>；"
                   "<HF_TOKEN>；身份证 <CN_ID>。")
    assert counts == {"email": 1, "phone": 1, "tw_id": 1, "credit_card": 1, "ip": 1,
                      "hf_token": 1, "cn_id": 1}
    found = find_pii(text)
    assert [f.kind for f in found] == ["email", "phone", "tw_id", "credit_card", "ip", "hf_token", "cn_id"]
    assert all(a.end <= b.start for a, b in zip(found, found[1:], strict=False))
    # kinds limits what is redacted
    assert redact(text, kinds=["email"])[1] == {"email": 1}
    with pytest.raises(ValueError, match="unknown PII kinds"):
        redact(text, kinds=["passport"])


def test_no_secret_literal_in_the_repository_sources():
    root = Path(__file__).resolve().parents[2]
    # every test file and fixture of the cleaning pipeline, and every module of it
    files = sorted((root / "tests" / "prep").glob("*.py")) + [root / "tests" / "prep" / "quality_labelled.jsonl"]
    files += sorted(Path(pii.__file__).parent.glob("*.py"))
    assert len(files) > 10
    for f in files:
        found = find_pii(f.read_text(encoding="utf-8"), kinds=pii.SECRET_KINDS)
        assert found == [], f"{f.name}: {found}"
