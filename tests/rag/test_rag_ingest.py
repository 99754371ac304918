"""Reading documents and cutting them into chunks: sentence ends in 繁/简/English, Markdown
heading paths, PDF pages, exact offsets, and bad files skipped with their reason."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pypdf
import pytest

from jielong.rag.chunk import Chunk, HFCounter, SimpleCounter, chunk_document, units
from jielong.rag.ingest import Document, Skipped, read_file
from jielong.tokenizer import train_tokenizer

# Planted sentences: each chunk must be a run of whole ones. Token counts (SimpleCounter) by hand.
HANT = ["今天天氣很好。", "我們去公園散步吧！", "「你真的要去嗎？」", "他問；", "我說：是的……",
        "圖書館在哪裡？", "就在車站旁邊。"]
HANS = ["今天天气很好。", "我们去公园散步吧！", "「你真的要去吗？」", "他问；", "我说：是的……",
        "图书馆在哪里？", "就在车站旁边。"]
EN = ["The cat sat on the mat.", "Did it stay there all day?", "It did!",
      "\"We were sure,\" she said.", "Then it left at 3.30 p.m. for the garden.",
      "Nobody saw it again."]


def check_offsets(doc: Document, chunks: list[Chunk]) -> None:
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text and c.text.strip() == c.text


@pytest.mark.parametrize("sentences,sep", [(HANT, ""), (HANS, ""), (EN, " ")])
def test_chunks_are_runs_of_whole_sentences_with_overlap(sentences, sep):
    text = sep.join(sentences)
    doc = Document("planted.txt", text)
    assert [text[s:e] for s, e, _ in units(text, 0, len(text))] == sentences
    chunks = chunk_document(doc, size=12, overlap=5)
    check_offsets(doc, chunks)
    bounds = {text.index(s) for s in sentences} | {text.index(s) + len(s) for s in sentences}
    counter = SimpleCounter()
    for c in chunks:
        assert c.start in bounds and c.end in bounds, c.text  # starts and ends at a sentence edge
        assert counter.count(c.text) <= 12
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in itertools.pairwise(chunks):  # consecutive chunks overlap by whole sentences, or touch
        assert a.start < b.start <= a.end + len(sep)
        assert counter.count(text[b.start:a.end]) <= 5
    assert any(b.start < a.end for a, b in itertools.pairwise(chunks))  # the overlap happens


def test_english_abbreviations_do_not_end_a_sentence():
    text = "Mr. Li met Dr. Wang at 9 a.m. in St. Louis. J. K. Rowling wrote it. Done."
    assert [text[s:e] for s, e, _ in units(text, 0, len(text))] == [
        "Mr. Li met Dr. Wang at 9 a.m. in St. Louis.", "J. K. Rowling wrote it.", "Done."]


def test_a_sentence_longer_than_the_size_is_cut_at_token_boundaries():
    long = "這是一個非常非常長的句子沒有任何標點符號一直寫下去" * 3 + "。短句。"
    doc = Document("long.txt", long)
    chunks = chunk_document(doc, size=10, overlap=2)
    check_offsets(doc, chunks)
    assert all(SimpleCounter().count(c.text) <= 10 for c in chunks)
    # pieces of one sentence do not overlap: a 10-token piece is more than the overlap of 2
    assert chunks[0].text == long[:10] and chunks[1].start == 10
    assert chunks[-1].text.endswith("短句。")


def test_paragraph_break_preferred(tmp_path):
    text = "第一段的第一句。第一段的第二句。\n\n第二段很長的第一句話在這裡。第二段的第二句話也很長。"
    chunks = chunk_document(Document("p.txt", text), size=24, overlap=0)
    assert chunks[0].text == "第一段的第一句。第一段的第二句。"  # not "… 第二段很長的第一句話在這裡。"


def test_markdown_heading_paths_and_fences(tmp_path):
    md = ("前言一句。\n\n# 安裝\n\n先下載。\n\n## Linux\n\nRun make install.\n\n```bash\n# not a heading\n```\n\n"
          "### 疑難排解\n\n重新啟動。\n\n## Windows\n\n雙擊安裝程式。\n\n# FAQ\nWhy? Because.\n")
    p = tmp_path / "guide.md"
    p.write_text(md, encoding="utf-8")
    [doc] = read_file(p)
    chunks = chunk_document(doc, size=50, overlap=0)
    check_offsets(doc, chunks)
    assert [(c.heading, c.text.splitlines()[-1]) for c in chunks] == [
        (None, "前言一句。"), ("安裝", "先下載。"), ("安裝 > Linux", "```"),
        ("安裝 > Linux > 疑難排解", "重新啟動。"), ("安裝 > Windows", "雙擊安裝程式。"),
        ("FAQ", "Why? Because.")]
    assert chunks[3].indexed_text().startswith("安裝 > Linux > 疑難排解\n")


def tiny_pdf(pages: list[str]) -> bytes:
    """A PDF of text pages (Helvetica), written by hand: catalog, pages, a font, a page and a
    content stream per page, and the cross-reference table."""
    n = len(pages)
    objs = ["<< /Type /Catalog /Pages 2 0 R >>",
            f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>",
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        lines = " ".join(f"({line}) Tj 0 -16 Td" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 72 720 Td {lines} ET"
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                    f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>")
        objs.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for k, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(f"{k} 0 obj\n{body}\nendobj\n".encode())
    xref = out.tell()
    out.write(f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode())
    out.write("".join(f"{o:010d} 00000 n \n" for o in offsets).encode())
    out.write(f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def test_pdf_pages_kept(tmp_path):
    p = tmp_path / "report.pdf"
    p.write_bytes(tiny_pdf(["Quarterly report. Sales rose.", "", "The answer is Zanzibar.\nIt is an island."]))
    [doc] = read_file(p)
    chunks = chunk_document(doc, size=20, overlap=0)
    check_offsets(doc, chunks)
    assert [(c.page, c.text.replace("\n", " ")) for c in chunks] == [
        (1, "Quarterly report. Sales rose."), (3, "The answer is Zanzibar. It is an island.")]


def test_bad_files_are_skipped_with_a_reason(tmp_path):
    good = tiny_pdf(["Secret plans."])
    w = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(good)))
    w.encrypt("hunter2", algorithm="RC4-128")
    buf = io.BytesIO()
    w.write(buf)
    cases = {
        "locked.pdf": (buf.getvalue(), "encrypted PDF"),
        "broken.pdf": (b"%PDF-1.4\nthis is not a pdf at all", "unreadable PDF"),
        "empty.txt": (b"", "empty"),
        "blank.md": ("  \n\n \u3000\n".encode(), "empty"),
        "latin1.txt": ("café".encode("latin-1"), "not UTF-8"),
        "bad.jsonl": (b'{"text": "ok"}\n{oops\n', "line 2: not JSON"),
        "other.jsonl": (b'{"body": "ok"}\n', "no 'text' field"),
        "notsquad.json": (b'{"rows": []}', "not SQuAD-style"),
        "image.png": (b"\x89PNG", "not a document type"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(Skipped, match=reason):
            read_file(tmp_path / name)
    # an owner-password-only PDF (empty user password) opens
    w = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(good)))
    w.encrypt("", owner_password="owner", algorithm="RC4-128")
    w.write(tmp_path / "owner.pdf")
    assert read_file(tmp_path / "owner.pdf")[0].text == "Secret plans."


def test_html_jsonl_and_squad(tmp_path):
    (tmp_path / "page.html").write_text(
        "<!DOCTYPE html><html><head><script>var x=1;</script></head><body><nav><a href='/'>首頁</a>"
        "</nav><article><h1>退貨政策</h1><p>商品到貨後七天內可以申請退貨。請保留發票與原包裝，否則無法辦理。</p>"
        "<p>退款會在收到商品後十四個工作天內完成。如有問題，請聯絡客服。</p></article>"
        "<footer>版權所有</footer></body></html>", encoding="utf-8")
    [doc] = read_file(tmp_path / "page.html")
    assert "七天內可以申請退貨" in doc.text and "var x" not in doc.text and "版權所有" not in doc.text
    (tmp_path / "rows.jsonl").write_text('{"body": "第一行。"}\n\n{"body": ""}\n{"body": "Third row."}\n',
                                         encoding="utf-8")
    docs = read_file(tmp_path / "rows.jsonl", field="body")
    assert [(d.source, d.text) for d in docs] == [(f"{tmp_path}/rows.jsonl:1", "第一行。"),
                                                  (f"{tmp_path}/rows.jsonl:4", "Third row.")]
    squad = {"data": [{"title": "台北", "paragraphs": [{"context": "台北是首都。", "qas": []},
                                                      {"context": "人口很多。", "qas": []}]},
                      {"title": "Paris", "paragraphs": [{"context": "Paris is big.", "qas": []}]}]}
    (tmp_path / "set.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    docs = read_file(tmp_path / "set.json")
    assert [(Path(d.source).name, d.text, d.sections[0].heading) for d in docs] == [
        ("set.json#0", "台北是首都。", "台北"), ("set.json#1", "人口很多。", "台北"),
        ("set.json#2", "Paris is big.", "Paris")]


def test_sizes_in_a_real_tokenizer():
    tok = train_tokenizer(["hello world, the cat sat on the mat. " * 20, "今天天氣很好。" * 20], vocab_size=300)
    counter = HFCounter(tok)
    text = "The cat sat on the mat. " * 10 + "今天天氣很好。" * 5
    doc = Document("t.txt", text.strip())
    chunks = chunk_document(doc, size=16, overlap=4, counter=counter)
    check_offsets(doc, chunks)
    assert all(counter.count(c.text) <= 16 for c in chunks) and len(chunks) > 3
