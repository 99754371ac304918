"""`jielong data`: readers for every input format, and `jielong data clean` end to end on
a planted corpus (exact counts per step and reason, dropped documents aside, report) and,
when ../shared/data is present, on a slice of real Chinese and English text."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path

import pytest
from conftest import ZH_AI, ZH_AI_EDITED, ZH_AI_OTHER

from jielong import cli
from jielong.data.shards import TokenShards
from jielong.prep.finish import Finish
from jielong.prep.readers import InputReader, find_inputs, input_kind, read_texts
from jielong.prep.tally import Tally
from jielong.tokenizer import Tokenizer, train_tokenizer
from jielong.train.pretrain import prepare_data

zstd = pytest.importorskip("zstandard")

EN = [
    "The river town woke slowly on Saturday. Fishermen pulled their boats onto the gravel while the baker "
    "stacked warm loaves in the window. Children ran past the old stone bridge, arguing about whether the "
    "herons would return before the summer fair. By noon the market square was crowded with farmers selling "
    "apples, honey and freshly cut flowers, and the smell of roasted chestnuts drifted along every street.",
    "Learning to play the violin takes patience. Most teachers begin with posture: how to hold the bow lightly, "
    "how to rest the instrument on the shoulder, and how to keep the wrist relaxed. Only after weeks of open "
    "strings do students attempt simple melodies. Progress feels slow at first, yet a daily half hour of "
    "careful practice soon turns scratchy notes into something that sounds like music.",
    "Volcanic islands form where molten rock rises through the ocean floor. Over thousands of years, repeated "
    "eruptions build a mountain that eventually breaks the surface. Rain and waves then shape the new land, "
    "carving valleys and beaches. Seeds arrive on the wind or with migrating birds, and within a few centuries "
    "a bare cone of lava can become a green island full of forests, insects and nesting seabirds.",
    "Our neighbourhood library has started a repair café on the first Sunday of each month. Volunteers with "
    "soldering irons, sewing machines and a great deal of patience help visitors fix lamps, toasters, torn "
    "jackets and wobbly chairs. Last month they rescued forty items from the landfill. The organisers say the "
    "real goal is teaching people that broken things can often be mended with simple tools.",
]
ZH_HANS = ("做一碗好吃的牛肉面并不容易。首先要挑选带筋的牛腱，用冷水浸泡去除血水，再和葱、姜、八角一起慢慢炖煮。"
           "汤头的关键在于耐心，小火熬上三个小时，肉才会软嫩入味。面条最好选择手工拉面，煮到刚好有嚼劲就捞起。"
           "最后撒上一把酸菜和香菜，热腾腾地端上桌，常常让在外地工作的游子想起家乡的味道。")
PAGE = ("<!DOCTYPE html><html><head><title>Tea</title><script>var x = 1;</script></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/shop'>Shop</a></nav><article><h1>Mountain tea</h1>"
        "<p>High in the mountains the tea gardens are wrapped in cloud for most of the year. The leaves grow "
        "slowly there, and their flavour becomes sweeter and deeper than that of lowland tea.</p>"
        "<p>When the picking season arrives, farmers climb the slopes before dawn and pluck only the youngest "
        "bud and two leaves. Back at the workshop the leaves are withered, rolled and roasted, and every step "
        "depends on the experience of a master who has done it for decades.</p></article>"
        "<footer>Copyright 2024 Tea Shop. All rights reserved.</footer></body></html>")


def jsonl(path: Path, rows: list, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n")
    return path


def zst_write(path: Path, text: str) -> Path:
    path.write_bytes(zstd.ZstdCompressor().compress(text.encode("utf-8")))
    return path


def warc(path: Path, records: list[tuple[str, str, bytes]]) -> Path:
    """A WARC of HTTP responses (url, content type, body), gzipped per record if .gz."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=path.suffix == ".gz")
        for url, ctype, body in records:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            rec = w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                       warc_headers_dict={"WARC-Identified-Payload-Type": ctype.split(";")[0]})
            w.write_record(rec)
    return path


def docs_of(files: list[Path], **kw) -> list:
    return list(InputReader([str(f) for f in files], **kw).run())


# ----------------------------------------------------------------------------- readers


def test_input_kinds():
    assert input_kind("a.jsonl.zst") == ("jsonl", "zstd")
    assert input_kind("x/b.TXT.gz") == ("txt", "gzip")
    assert input_kind("c.warc.gz") == ("warc", "gzip")
    assert input_kind("d.parquet") == ("parquet", None)
    assert input_kind("e.htm") == ("html", None)
    assert input_kind("f.csv") is None and input_kind("g.parquet.gz") is None


def test_readers_for_every_format(tmp_path: Path):
    rows = [{"text": EN[0], "id": "a", "lang_hint": "en"}, {"text": ZH_AI}]
    files = [
        jsonl(tmp_path / "a.jsonl", rows),
        jsonl(tmp_path / "b.jsonl.gz", rows, opener=gzip.open),
        zst_write(tmp_path / "c.jsonl.zst", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
        zst_write(tmp_path / "d.txt.zst", EN[1]),
    ]
    (tmp_path / "e.txt").write_text(EN[2] + "\n\n\n" + EN[3] + "\n", encoding="utf-8")
    with gzip.open(tmp_path / "f.html.gz", "wt", encoding="utf-8") as f:
        f.write(PAGE)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [ZH_HANS, ZH_AI_OTHER], "url": ["u1", "u2"]}), tmp_path / "g.parquet")
    warc(tmp_path / "h.warc.gz", [("http://example.com/tea", "text/html; charset=utf-8", PAGE.encode()),
                                  ("http://example.com/logo.png", "image/png", b"\x89PNG\r\n")])
    warc(tmp_path / "i.warc", [("http://example.com/tea2", "text/html", PAGE.encode())])
    files += [tmp_path / n for n in ("e.txt", "f.html.gz", "g.parquet", "h.warc.gz", "i.warc")]
    assert find_inputs([str(tmp_path)]) == sorted(files)

    docs = docs_of(sorted(files))
    texts = [d.text for d in docs]
    assert texts[:7] == [EN[0], ZH_AI] * 3 + [EN[1]]
    assert texts[7] == EN[2] + "\n\n\n" + EN[3] + "\n"          # a .txt file is one document
    assert texts[8] == PAGE and docs[8].metadata["format"] == "html"
    assert texts[9:11] == [ZH_HANS, ZH_AI_OTHER] and docs[9].metadata["url"] == "u1"
    assert texts[11:] == [PAGE, PAGE]                          # the PNG record is skipped
    assert docs[11].metadata["url"] == "http://example.com/tea" and docs[11].metadata["format"] == "html"
    assert docs[0].id == "a" and docs[0].metadata["lang_hint"] == "en"
    assert [d.metadata["jl_pos"] for d in docs[:2]] == [[0, 0], [0, 1]]

    paragraphs = docs_of([tmp_path / "e.txt"], txt_split="paragraph")
    assert [d.text for d in paragraphs] == [EN[2], EN[3]]
    assert [d.id for d in paragraphs] == ["e.txt/1", "e.txt/4"]   # by first line number
    assert read_texts([tmp_path / "g.parquet"]) == [ZH_HANS, ZH_AI_OTHER]
    assert read_texts([tmp_path / "f.html.gz"])[0].startswith("Mountain tea")


def test_bad_records_become_unreadable_documents(tmp_path: Path):
    f = jsonl(tmp_path / "a.jsonl", [{"text": "fine"}, "{not json\n", {"body": "x"}, [1, 2], {"text": "  "}, "\n"])
    (tmp_path / "b.txt").write_bytes(b"ok line\n\xff\xfe broken")
    docs = docs_of([f, tmp_path / "b.txt"])
    errors = [d.metadata.get("read_error") for d in docs]
    assert docs[0].text == "fine" and errors[0] is None
    assert errors[1].startswith("a.jsonl:2: not valid JSON")
    assert errors[2] == "a.jsonl:3: no 'text' field (fields: body); pass --field NAME for another field"
    assert errors[3] == "a.jsonl:4: a JSON list, not an object"
    assert errors[4] == "a.jsonl:5: empty text" and docs[4].metadata["read_reason"] == "no_text"
    assert errors[5] == "b.txt:2: not valid UTF-8 (byte 0xff)"
    assert len(docs) == 6


def test_one_line_errors_for_user_mistakes(tmp_path: Path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n")
    (tmp_path / "empty").mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    cases = [
        ([str(tmp_path / "missing.jsonl")], "no such file or directory"),
        ([str(tmp_path / "x.csv")], "unsupported file type"),
        ([str(tmp_path / "empty")], "folder holds no"),
        ([str(tmp_path / "p.parquet")], "no 'text' column (columns: body); pass --field NAME"),
        ([str(tmp_path / "broken.jsonl.gz")], "cannot read it as jsonl"),
        ([str(tmp_path / "p.parquet"), "--skip", "dedup"], "--skip dedup: no such step"),
        ([str(tmp_path / "p.parquet"), "--min_quality", "0.5"], "need --quality_model"),
        ([str(tmp_path / "p.parquet"), "--executor", "slurm"], "needs --slurm_partition"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            cli.main(["data", "clean", *args, "--out", str(tmp_path / "out"), "--workers", "1",
                      "--skip", "html", "normalize", "language", "quality", "repetition", "harmful", "pii"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and message in err, (args, err)
    with pytest.raises(SystemExit):
        cli.main(["data", "stats", str(tmp_path / "empty")])
    assert "no stats.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end


def planted(tmp: Path) -> list[str]:
    """A small corpus in five formats with one of each thing a step should catch."""
    d = tmp / "corpus"
    d.mkdir()
    jsonl(d / "en.jsonl", [
        {"text": EN[0], "id": "en0"},
        {"text": EN[1], "id": "en1"},
        {"text": EN[2] + " Write to alice.chen@example.com with questions.", "id": "en2-pii"},
        {"text": "  " + EN[0].upper().replace(" ", "   ") + "\n", "id": "en0-exact"},
        {"text": EN[1].replace("weeks", "months", 1), "id": "en1-near"},
        {"text": "Buy now.", "id": "short"},
        "{this line is broken\n",
        {"text": "", "id": "empty"},
    ])
    zst_write(d / "zh.jsonl.zst", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"text": ZH_AI, "id": "zh-ai"}, {"text": ZH_AI_OTHER, "id": "zh-ai-other"},
        {"text": ZH_AI_EDITED, "id": "zh-ai-edited"}, {"text": ZH_HANS, "id": "zh-hans"}]))
    with gzip.open(d / "tea.html.gz", "wt", encoding="utf-8") as f:
        f.write(PAGE)
    (d / "notes.txt").write_text(EN[3] + "\n", encoding="utf-8")
    warc(d / "crawl.warc.gz", [("http://example.com/empty", "text/html", b"<html><body><script>var a=1;</script></body></html>")])
    return [str(d)]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory) -> tuple[Path, dict, str]:
    tmp = tmp_path_factory.mktemp("clean")
    out = tmp / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        stats = cli.run(["data", "clean", *planted(tmp), "--out", str(out), "--workers", "2",
                         "--shard_docs", "4"])
    return out, stats, buf.getvalue()


def test_clean_counts_every_step_and_reason(cleaned):
    out, stats, printed = cleaned
    by = {r["step"]: r for r in stats["steps"]}
    assert [r["step"] for r in stats["steps"]] == [
        "read", "readable", "html", "normalize", "language", "quality", "repetition", "harmful", "pii",
        "exact_dedup", "near_dedup"]
    assert by["read"]["docs"] == 15                      # 8 + 4 JSONL lines, 1 page, 1 txt, 1 WARC record
    assert by["readable"]["dropped"] == {"unreadable": 1, "no_text": 1}
    assert by["html"]["dropped"] == {"no_text": 1}       # the WARC page with only a script
    assert by["quality"]["dropped"] == {"too_short": 1}
    assert by["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert by["near_dedup"]["dropped"] == {"near_duplicate": 2}
    assert by["near_dedup"]["docs"] == 8
    for a, b in zip(stats["steps"], stats["steps"][1:], strict=False):
        assert b["docs_in"] == a["docs"] and a["docs"] - b["docs"] == sum(b["dropped"].values())
    assert stats["formats"] == {"html": 1, "jsonl": 12, "txt": 1, "warc": 1}
    assert stats["dedup"]["clusters"] == 3               # en0 (exact), en1 and zh-ai (near)
    assert "near_dedup" in printed and "near_duplicate 2" in printed


def test_clean_outputs_survivors_with_cluster_sizes(cleaned):
    out, stats, _ = cleaned
    assert sorted(p.name for p in (out / "data").iterdir()) == ["part-00000.jsonl", "part-00001.jsonl"]
    rows = [json.loads(x) for p in sorted((out / "data").glob("*.jsonl")) for x in p.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    # files in sorted order (crawl, en, notes, tea, zh), documents in file order
    assert ids[:4] + ids[5:] == ["en0", "en1", "en2-pii", "notes.txt/1", "zh-ai", "zh-ai-other", "zh-hans"]
    assert "tea.html.gz" in ids[4]
    meta = {r["id"]: r["metadata"] for r in rows}
    assert meta["en0"]["dup_cluster_size"] == 2 and meta["en1"]["dup_cluster_size"] == 2
    assert meta["zh-ai"]["dup_cluster_size"] == 2 and meta["zh-ai-other"]["dup_cluster_size"] == 1
    assert meta["zh-ai"]["script"] == "Hant" and meta["zh-hans"]["script"] == "Hans"
    assert meta["en0"]["lang"] == "en" and meta["zh-ai"]["lang"] == "zh"
    text = {r["id"]: r["text"] for r in rows}
    assert "alice.chen@example.com" not in text["en2-pii"] and "<EMAIL>" in text["en2-pii"]
    page = text[ids[4]]
    assert page.startswith("Mountain tea") and "Copyright" not in page and "var x" not in page
    assert all("jl_pos" not in m for m in meta.values())
    assert stats["output"]["docs"] == 8 and stats["output"]["lang"] == {"en": 5, "zh": 3}
    assert stats["output"]["script"] == {"Hans": 1, "Hant": 2}


def test_clean_writes_dropped_documents_aside(cleaned):
    out, stats, _ = cleaned
    files = sorted(p.name for p in (out / "dropped").glob("*.jsonl"))
    assert files == ["exact_duplicate.jsonl", "near_duplicate.jsonl", "no_text.jsonl", "too_short.jsonl",
                     "unreadable.jsonl"]
    assert stats["dropped_files"] == files

    def read(name):
        return [json.loads(x) for x in (out / "dropped" / name).read_text().splitlines()]

    near = {d["id"]: d["metadata"] for d in read("near_duplicate.jsonl")}
    assert near["zh-ai-edited"]["duplicate_of"] == "zh-ai" and near["en1-near"]["duplicate_of"] == "en1"
    assert near["zh-ai-edited"]["dropped_by"] == "near_dedup"
    assert read("exact_duplicate.jsonl")[0]["metadata"]["duplicate_of"] == "en0"
    short = read("too_short.jsonl")[0]
    assert short["text"] == "Buy now." and short["metadata"]["dropped_by"] == "quality"
    assert read("unreadable.jsonl")[0]["metadata"]["read_error"].startswith("en.jsonl:7: not valid JSON")
    assert sorted(d["metadata"]["dropped_by"] for d in read("no_text.jsonl")) == ["html", "readable"]


def test_report_and_stats_command(cleaned, capsys):
    out, stats, _ = cleaned
    report = (out / "report.md").read_text()
    assert "| near_dedup | 10 | 8 | 80.0% |" in report
    for chart in ("funnel", "lengths", "mix", "drop_reasons"):
        assert (out / "charts" / f"{chart}.png").stat().st_size > 1000
        assert f"charts/{chart}.png" in report
    assert not (out / ".work").exists() and (out / "logs" / "stage1" / "stats.json").exists()
    (out / "report.md").unlink()
    again = cli.run(["data", "stats", str(out)])
    assert again == stats and (out / "report.md").read_text() == report
    assert "exact_dedup" in capsys.readouterr().out


def test_parquet_output_and_token_shards(tmp_path: Path):

    tok_dir = train_tokenizer(EN + [ZH_AI, ZH_HANS] * 3, vocab_size=300).save(tmp_path / "tok")
    src = jsonl(tmp_path / "in.jsonl", [{"text": t} for t in EN + [ZH_AI, ZH_AI, ZH_HANS]])
    out = tmp_path / "out"
    stats = cli.run(["data", "clean", str(src), "--out", str(out), "--workers", "1", "--format", "parquet",
                     "--tokenizer", str(tok_dir), "--skip", "html", "normalize", "quality", "repetition",
                     "harmful", "pii"])
    import pyarrow.parquet as pq

    table = pq.read_table(out / "data" / "part-00000.parquet").to_pylist()
    assert [r["text"] for r in table] == EN + [ZH_AI, ZH_HANS]
    assert json.loads(table[4]["metadata"])["dup_cluster_size"] == 2
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    assert meta["train_docs"] + meta["val_docs"] == 6 == stats["output"]["docs"]

    assert TokenShards(out / "tokens", "train", 8).num_tokens > 100
    # `jielong pretrain OUT/data --tokenizer TOK` recognises these shards as its own

    before = (out / "tokens" / "meta.json").stat().st_mtime_ns
    again = prepare_data([str(out / "data")], Tokenizer.from_dir(tok_dir), Path(tok_dir), out / "tokens",
                         "text", 0.01)
    assert again == meta and (out / "tokens" / "meta.json").stat().st_mtime_ns == before


def test_killed_run_resumes_finished_tasks(tmp_path: Path, monkeypatch):
    files = [jsonl(tmp_path / f"{i}.jsonl", [{"text": t}]) for i, t in enumerate(EN)]
    out = tmp_path / "out"
    args = ["data", "clean", *map(str, files), "--out", str(out), "--workers", "1", "--skip",
            "html", "normalize", "language", "quality", "repetition", "harmful", "pii"]

    def killed(self, data=None, rank=0, world_size=1):
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(Finish, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.run(args)
    done = sorted(p.name for p in (out / ".work" / "logs" / "stage1" / "completions").iterdir())
    assert done == ["00000", "00001", "00002", "00003"]
    monkeypatch.undo()
    ran, original = [], Tally.run

    def counting(self, data, rank=0, world_size=1):
        ran.append(rank)
        return original(self, data, rank, world_size)

    monkeypatch.setattr(Tally, "run", counting)
    stats = cli.run(args)
    assert ran == [] and stats["output"]["docs"] == 4    # stage 1 was not run again
    assert not (out / ".work").exists()


# ----------------------------------------------------------------------------- real text


def test_clean_on_shared_data(shared_data: Path, tmp_path: Path):
    """A slice of ../shared/data: Traditional poems, Simplified lyrics, mixed classics, Shakespeare."""
    src = tmp_path / "slice"
    src.mkdir()
    for name, n in (("tang-poems-zh-hant.jsonl", 400), ("song-ci-zh-hans.jsonl", 300), ("classics-zh.jsonl", 40)):
        with open(shared_data / name, encoding="utf-8") as f:
            (src / name).write_text("".join(next(f) for _ in range(n)), encoding="utf-8")
    lines = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")[:3000]
    (src / "shakespeare.txt").write_text("\n".join(lines), encoding="utf-8")
    out = tmp_path / "out"
    stats = cli.run(["data", "clean", str(src), "--out", str(out), "--workers", "2", "--txt_split", "paragraph"])
    by = {r["step"]: r for r in stats["steps"]}
    assert by["read"]["docs"] > 1000
    assert stats["output"]["docs"] > 30          # the web-oriented length rules drop most short poems
    assert set(stats["output"]["lang"]) >= {"zh", "en"}
    assert {"Hant", "Hans"} <= set(stats["output"]["script"])
    assert by["quality"]["dropped"].get("too_short", 0) > 0      # Shakespeare's one-line speeches
    assert (out / "report.md").exists() and list((out / "dropped").glob("*.jsonl"))


POEMS = ["靜夜思\n李白\n床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。",
         "春曉\n孟浩然\n春眠不覺曉，處處聞啼鳥。夜來風雨聲，花落知多少。",
         "相思\n王維\n紅豆生南國，春來發幾枝。願君多採擷，此物最相思。",
         "登鸛雀樓\n王之渙\n白日依山盡，黃河入海流。欲窮千里目，更上一層樓。",
         "江雪\n柳宗元\n千山鳥飛絕，萬徑人蹤滅。孤舟蓑笠翁，獨釣寒江雪。"]


def test_a_run_that_drops_most_says_which_rule_and_what_keeps_them(tmp_path: Path, capsys):
    src = jsonl(tmp_path / "poems.jsonl", [{"text": p} for p in POEMS])
    stats = cli.run(["data", "clean", str(src), "--out", str(tmp_path / "web"), "--workers", "1"])
    assert stats["output"]["docs"] == 0
    note = capsys.readouterr().out.strip().splitlines()[-1]
    assert note.startswith("note: 100.0% of the 5 documents read were dropped, most by the quality "
                           "step's `too_short` rule (5, 100.0%)") and "`--quality_preset literature`" in note
    assert "--quality_preset literature" in (tmp_path / "web" / "report.md").read_text()
    # the literature preset keeps every quatrain, and says nothing
    stats = cli.run(["data", "clean", str(src), "--out", str(tmp_path / "lit"), "--workers", "1",
                     "--quality_preset", "literature"])
    assert stats["output"]["docs"] == 5 and "note:" not in capsys.readouterr().out
