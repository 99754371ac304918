"""Redaction as a pipeline step (`jielong.prep.redact`): PiiRedact replaces personal data with
typed placeholders and counts each kind in the metadata and the stats. (What the drop writer
writes aside is checked end to end in test_clean_no_leaks.py.)"""

from datatrove.data import Document
from test_pii import HF

from jielong.prep.redact import PiiRedact


def test_pii_redact_step_counts_in_metadata_and_stats():
    docs = [Document(text="寫信給 amy@example.com 或 bob@example.org，電話 +86 138 1234 5678", id="a"),
            Document(text="沒有個資的句子。", id="b"),
            Document(text=f"token {HF} at 8.8.8.8", id="c")]
    step = PiiRedact()
    out = list(step(docs))
    assert [d.text for d in out] == ["寫信給 <EMAIL> 或 <EMAIL>，電話 <PHONE>", "沒有個資的句子。",
                                     "token <HF_TOKEN> at <IP>"]
    assert out[0].metadata["pii"] == {"email": 2, "phone": 1}
    assert "pii" not in out[1].metadata
    assert out[2].metadata["pii"] == {"hf_token": 1, "ip": 1}
    assert step.stats["pii_email"].total == 2 and step.stats["pii_phone"].total == 1
    assert step.stats["pii_hf_token"].total == 1 and step.stats["total"].total == 3
    only = list(PiiRedact(kinds=["ip"])([Document(text="amy@example.com 8.8.8.8", id="x")]))
    assert only[0].text == "amy@example.com <IP>"
