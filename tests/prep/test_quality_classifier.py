"""The quality classifier learns a planted distinction; up-sampling repeats the best
documents exactly N times, in the function and through `jielong data clean`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from jielong import cli
from jielong.errors import UserError
from jielong.prep.quality_model import QualityModel, auc, train_quality, upsample_copies

EN_SENTENCES = [
    "The committee met on Tuesday to review the annual budget.", "Rain fell steadily over the valley all night.",
    "She studied the old maps before planning the route.", "Farmers in the region rotate wheat and beans.",
    "The museum opened a new gallery of ancient pottery.", "Engineers tested the bridge with heavy trucks.",
    "His letters describe the harbour in great detail.", "Most birds in the marsh migrate south in autumn.",
    "The novel follows three sisters across two decades.", "Students compared the results of both experiments.",
    "A small bakery on the corner sells rye bread.", "The orchestra rehearsed the symphony twice that week.",
    "Historians still debate the causes of the war.", "The river carries silt down to the wide delta.",
    "Our teacher explained how the lungs exchange gases.", "The village library lends tools as well as books.",
]
ZH_SENTENCES = [
    "委員會在星期二開會審查年度預算。", "雨整夜不停地落在山谷裡。", "她在規劃路線之前仔細研究了舊地圖。",
    "這個地區的農民輪流種植小麥和豆類。", "博物館新開了一間古代陶器展覽室。", "工程師用重型卡車測試了這座橋。",
    "他的書信詳細描寫了港口的景色。", "沼澤裡的大多數鳥類在秋天向南遷徙。", "這部小說講述三姐妹二十年的故事。",
    "學生們比較了兩個實驗的結果。", "街角的小麵包店賣黑麥麵包。", "樂團那一週把交響曲排練了兩次。",
    "歷史學家至今仍在爭論戰爭的起因。", "河水把泥沙帶到寬闊的三角洲。", "老師解釋了肺如何交換氣體。",
]
EN_SPAM = ["CLICK HERE", "free download", "best price!!!", "www.cheap-deals.example", "buy now", "limited offer",
           "100% free", "hot sale", "sign up today", "win a prize", ">>>", "$$$"]
ZH_SPAM = ["点击这里", "免费下载", "限时优惠", "立即购买", "官方网站", "手机版", "在线观看", "高清无码", "秒杀", "包邮",
           "！！！", "【热门】"]


def good_doc(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return " ".join(rng.sample(EN_SENTENCES, 5))
    return "".join(rng.sample(ZH_SENTENCES, 5))


def bad_doc(rng: random.Random) -> str:
    pool, sep = (EN_SPAM, " ") if rng.random() < 0.5 else (ZH_SPAM, "")
    return sep.join(rng.choice(pool) + str(rng.randint(0, 99)) * (rng.random() < 0.3) for _ in range(12))


def corpus(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    return [good_doc(rng) for _ in range(n)], [bad_doc(rng) for _ in range(n)]


def test_learns_a_planted_distinction():
    good, bad = corpus(300, seed=0)
    model = train_quality(good, bad, buckets=2**16, steps=80)
    assert model.report["val_accuracy"] == 1.0 and model.report["val_auc"] == 1.0
    new_good, new_bad = corpus(100, seed=1)          # documents it never saw
    s_good, s_bad = model.score_many(new_good), model.score_many(new_bad)
    assert s_good.min() > 0.5 > s_bad.max()
    assert auc(np.r_[s_good, s_bad], np.r_[np.ones(100), np.zeros(100)]) == 1.0
    assert model.score(new_good[0]) == pytest.approx(float(s_good[0]), abs=1e-6)


def test_model_file_round_trip_and_bad_file(tmp_path: Path):
    good, bad = corpus(60, seed=2)
    model = train_quality(good, bad, buckets=2**16, steps=30)
    loaded = QualityModel.load(model.save(tmp_path / "q.json"))
    assert np.allclose(loaded.score_many(good[:5] + bad[:5]), model.score_many(good[:5] + bad[:5]))
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a jielong quality model"):
        QualityModel.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no such quality model"):
        QualityModel.load(tmp_path / "missing.json")
    with pytest.raises(UserError, match="at least 2 good"):
        train_quality(good[:1], bad)


def test_upsampling_repeats_the_top_documents_exactly_n_times():
    scores = np.array([0.1, 0.9, 0.5, 0.95, 0.3, 0.9, 0.2, 0.7])
    copies = upsample_copies(scores, top_fraction=0.25, times=3)
    assert copies.tolist() == [1, 3, 1, 3, 1, 1, 1, 1]    # 2 of 8; the tie goes to the earlier one
    assert upsample_copies(scores, 0.0, 5).tolist() == [1] * 8
    assert upsample_copies(scores, 1.0, 2).tolist() == [2] * 8
    with pytest.raises(UserError):
        upsample_copies(scores, 1.5, 2)
    with pytest.raises(UserError):
        upsample_copies(scores, 0.5, 0)


def test_quality_train_and_clean_with_the_model(tmp_path: Path, capsys):
    good, bad = corpus(80, seed=3)
    (tmp_path / "good.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in good))
    (tmp_path / "bad.txt").write_text("\n\n".join(bad))        # one document per blank-line block
    model = tmp_path / "q.json"
    report = cli.run(["data", "quality-train", "--good", str(tmp_path / "good.jsonl"), "--bad",
                      str(tmp_path / "bad.txt"), "--out", str(model), "--buckets", "65536", "--steps", "60"])
    assert report["good"] == 80 and report["bad"] == 80 and report["val_accuracy"] == 1.0
    assert "held-out accuracy 1.000" in capsys.readouterr().out

    # 6 good + 6 bad documents; drop the bad ones, repeat the best quarter of the rest 3 times
    rng = random.Random(4)
    docs = [good_doc(rng) for _ in range(6)] + [bad_doc(rng) for _ in range(6)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "id": f"d{i}"}, ensure_ascii=False) + "\n"
                                               for i, t in enumerate(docs)))
    out = tmp_path / "out"
    stats = cli.run(["data", "clean", str(tmp_path / "in.jsonl"), "--out", str(out), "--workers", "1",
                     "--skip", "html", "normalize", "language", "quality", "repetition", "harmful", "pii",
                     "near_dedup", "--quality_model", str(model), "--min_quality", "0.5",
                     "--upsample_top_fraction", "0.34", "--upsample_times", "3"])
    rows = [json.loads(x) for x in (out / "data" / "part-00000.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {f"d{i}" for i in range(6)}
    scores = {r["id"]: r["metadata"]["quality"] for r in rows}
    best = sorted(scores, key=lambda k: (-scores[k], int(k[1:])))[:2]   # round(0.34 * 6) = 2
    for doc_id in scores:
        n = sum(r["id"] == doc_id for r in rows)
        assert n == (3 if doc_id in best else 1), doc_id
    assert len(rows) == 6 + 2 * 2
    assert stats["steps"][-1] == {"step": "upsample", "docs_in": 6, "docs": 10, "seconds": 0.0,
                                  "chars": sum(len(r["text"]) for r in rows), "dropped": {}, "added": 4}
    dropped = [json.loads(x) for x in (out / "dropped" / "low_quality.jsonl").read_text().splitlines()]
    assert {d["id"] for d in dropped} == {f"d{i}" for i in range(6, 12)}
    assert all(d["metadata"]["quality"] < 0.5 and d["metadata"]["dropped_by"] == "classifier" for d in dropped)
