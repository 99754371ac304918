"""The demo's report card when CMMLU is absent, broken or too long for the model, and its
verdict on chance, on hand-made numbers."""

from conftest import tiny_corpus

from jielong.demo.evaluate import at_chance, cmmlu_items
from jielong.tokenizer import train_tokenizer


def test_cmmlu_absent_broken_or_too_long(tmp_path):
    tok = train_tokenizer(tiny_corpus(50), vocab_size=300)
    assert cmmlu_items(str(tmp_path / "nowhere"), tok, 256, None) == \
        ([], {"skipped": f"CMMLU dev not found ({tmp_path / 'nowhere'})"})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "law.csv").write_text(",Question,A,B,C,D,Answer\n0,q,a,b,c,d,E\n", encoding="utf-8")
    assert cmmlu_items(str(bad), tok, 256, None)[1]["skipped"].endswith(
        "law.csv:2: answer 'E' is not one of the choices A, B, C, D")
    ok = tmp_path / "ok"
    ok.mkdir()
    (ok / "law.csv").write_text(",Question,A,B,C,D,Answer\n0,短,a,b,c,d,A\n1," + "長" * 200
                                + ",a,b,c,d,B\n2,短短,a,b,c,d,C\n", encoding="utf-8")
    items, info = cmmlu_items(str(ok), tok, 300, 2)  # the first 2 of the subject; one too long
    assert info == {"path": str(ok), "subjects": 1, "questions": 2, "scored": 1, "limit": 2}
    assert [q.question for _, q, _, _ in items] == ["短"]


def test_at_chance_reads_each_models_interval():
    def card(*cis):
        return {"runs": ["base", "SFT"], "scores": [{"score": "CMMLU dev accuracy (0-shot)", "n": 335, "runs": [
            {"value": (lo + hi) / 2, "ci": (lo, hi)} for lo, hi in cis]}]}
    assert "every interval holds chance" in at_chance(card((0.2, 0.3), (0.22, 0.28)))
    said = at_chance(card((0.2, 0.3), (0.26, 0.34)))
    assert "SFT 30.0% [26.0%, 34.0%]" in said and "(SFT above)" in said
