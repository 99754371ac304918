"""Reward functions for reinforcement learning (`jielong train rlhf --reward_fn NAME`).

A reward function scores a batch of replies:

    fn(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]

`prompts[i]` is the conversation the reply answers (messages without the reply),
`replies[i]` the reply's text (without its end-of-turn token), and `items[i]` the rest of
its data row: every field of the JSONL row but the prompt itself (e.g. "answer"), plus
"reference" — the final assistant reply — for rows written as whole conversations.

Built in (for tasks whose answers can be checked):
- `arithmetic` 1 when the reply's final number (after the last "=", else its last number)
               equals the row's "answer" (else the reference reply's final number); 0.1 for
               a wrong number (a format bonus: at least it answered with one); 0 otherwise.
- `script`     1 when a Chinese reply is in the script of the question (Traditional vs
               Simplified), or an English question gets a reply without Chinese; 0 for the
               other script; 0.5 when the reply shows no script either way.
- `length`     closeness to a target length in characters (the row's "target_length",
               else 50): 1 − |n − target| / target, at least 0.
- `concise`    shorter is better: 1 − n / 200 characters (at least 0); an empty reply 0.

Your own: `--reward_fn path/to/my_rewards.py:score` or `--reward_fn package.module:score`
(any callable with the signature above). It runs your code, as a training script would;
nothing is ever imported from a model directory.

A built-in reward may carry `check(item) -> str | None`: a reason the row cannot be scored
(e.g. no answer to compare with), so bad data is reported with its file and line before
training starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

from jielong.errors import UserError

Reward = Callable[[list[list[dict]], list[str], list[dict]], list[float]]

# ---- arithmetic ---------------------------------------------------------------------------

_NUMBER = re.compile(r"[-−]?\d+(?:,\d{3})*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The number a reply ends up giving: the first one after the last "=" (so "7 + 5 = 12."
    gives 12), else the last number in the text; None if there is none. Full-width digits
    and thousands separators are understood."""
    text = unicodedata.normalize("NFKC", text)
    tail = text.rsplit("=", 1)[1] if "=" in text else None
    found = _NUMBER.findall(tail) if tail is not None else []
    found = found[:1] or _NUMBER.findall(text)[-1:]
    if not found:
        return None
    return float(found[0].replace(",", "").replace("−", "-"))


def _answer_of(item: dict) -> float | None:
    if "answer" in item:
        value = item["answer"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return final_number(str(value))
    return final_number(str(item.get("reference", "")))


def arithmetic(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]:
    out = []
    for reply, item in zip(replies, items, strict=True):
        got, want = final_number(reply), _answer_of(item)
        out.append(0.0 if got is None else 1.0 if want is not None and got == want else 0.1)
    return out


def _check_arithmetic(item: dict) -> str | None:
    if _answer_of(item) is None:
        return ('no number to check against: give the row an "answer" field (e.g. "12"), or '
                "end it with an assistant reply that states the answer")
    return None


arithmetic.check = _check_arithmetic

# ---- script -------------------------------------------------------------------------------

# Common characters the two scripts write differently, Traditional then Simplified. Only
# pairs whose Simplified form is not also an ordinary Traditional character (后, 里, 面, 台
# are) so that each side's characters mark its script.
_PAIRS = (
    "們们這这個个來来說说會会對对時时為为國国學学麼么樣样還还點点開开嗎吗電电車车書书長长"
    "門门問问間间見见覺觉讓让話话語语認认識识寵宠貓猫龍龙鄉乡養养歡欢顏颜愛爱鎮镇誰谁過过"
    "氣气東东園园兒儿無无風风馬马魚鱼鳥鸟雞鸡頭头聽听寫写讀读買买賣卖錢钱飯饭紅红綠绿藍蓝"
    "黃黄歲岁體体運运動动經经濟济號号發发現现實实際际與与兩两萬万從从邊边題题灣湾區区應应"
    "該该師师務务員员醫医農农業业廠厂漢汉陽阳陰阴島岛橋桥樹树葉叶燈灯飛飞機机場场歷历練练"
    "習习筆笔紙纸鐘钟親亲媽妈爺爷孫孙麗丽蘭兰劉刘陳陈張张趙赵鄭郑吳吴韓韩楊杨華华鳳凤貝贝"
    "圖图館馆湯汤齊齐雖虽輕轻帶带遠远進进選选連连達达適适網网絡络線线條条結结給给終终總总"
    "續续織织紹绍組组細细級级約约紀纪統统維维編编觀观視视計计記记設设許许試试詩诗課课調调"
    "談谈請请謝谢講讲證证議议護护變变讚赞貨货費费資资質质賽赛負负財财責责貴贵購购戰战爭争"
    "歸归壞坏煙烟燒烧熱热寶宝專专將将導导尋寻當当盡尽縣县聯联聲声腦脑臉脸舊旧藝艺藥药蘇苏"
    "處处蟲虫衛卫裝装規规覽览訊讯豐丰趕赶軍军輛辆轉转輸输辦办郵邮鄰邻鐵铁銀银錯错鍋锅閱阅"
    "關关陸陆隊队階阶隨随險险雙双雜杂難难離离靈灵靜静頁页順顺須须預预領领顯显飲饮餅饼驗验"
    "麥麦齒齿龜龟鎖锁歐欧漁渔"
)
_HANT = set(_PAIRS[0::2])
_HANS = set(_PAIRS[1::2])


def _opencc_sets() -> tuple[set[str], set[str]] | None:
    """With opencc installed: (chars that t2s changes, chars that s2t changes), judged per
    character over the CJK block, cached."""
    global _OPENCC
    if _OPENCC is None:
        try:
            import opencc
        except ImportError:
            _OPENCC = False
            return None
        t2s, s2t = opencc.OpenCC("t2s"), opencc.OpenCC("s2t")
        block = "".join(chr(c) for c in range(0x4E00, 0xA000))
        simp, trad = t2s.convert(block), s2t.convert(block)
        _OPENCC = ({a for a, b in zip(block, simp, strict=True) if a != b},
                   {a for a, b in zip(block, trad, strict=True) if a != b})
    return _OPENCC or None


_OPENCC: tuple[set[str], set[str]] | bool | None = None


def script_of(text: str) -> str | None:
    """"zh-Hant", "zh-Hans", "en" (no Chinese characters) or None (Chinese, but as many
    characters peculiar to each script, e.g. none)."""
    if not any("\u4e00" <= c <= "\u9fff" for c in text):
        return "en"
    hant, hans = _opencc_sets() or (_HANT, _HANS)
    a, b = sum(c in hant for c in text), sum(c in hans for c in text)
    return None if a == b else "zh-Hant" if a > b else "zh-Hans"


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


def script(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]:
    out = []
    for messages, reply in zip(prompts, replies, strict=True):
        want, got = script_of(_last_user(messages)), script_of(reply)
        out.append(0.5 if want is None or got is None else float(want == got))
    return out


# ---- length -------------------------------------------------------------------------------

DEFAULT_TARGET_LENGTH = 50
CONCISE_CHARS = 200


def length(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]:
    out = []
    for reply, item in zip(replies, items, strict=True):
        target = item.get("target_length", DEFAULT_TARGET_LENGTH)
        out.append(max(0.0, 1 - abs(len(reply) - target) / target))
    return out


def _check_length(item: dict) -> str | None:
    t = item.get("target_length", DEFAULT_TARGET_LENGTH)
    if isinstance(t, bool) or not isinstance(t, int | float) or t <= 0:
        return f'"target_length" must be a positive number of characters, got {t!r}'
    return None


length.check = _check_length


def concise(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]:
    return [max(0.0, 1 - len(r) / CONCISE_CHARS) if r.strip() else 0.0 for r in replies]


BUILT_IN: dict[str, Reward] = {"arithmetic": arithmetic, "script": script, "length": length,
                               "concise": concise}

# ---- finding a reward function ------------------------------------------------------------


def load_reward_fn(spec: str) -> Reward:
    """A built-in name, `path/to/file.py:function` or `module:function` → the function."""
    spec = spec.strip()
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    usage = (f"use a built-in ({', '.join(BUILT_IN)}), FILE.py:FUNCTION or "
             "MODULE:FUNCTION")
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UserError(f"--reward_fn {spec!r}: not a reward function; {usage}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise UserError(f"--reward_fn {spec!r}: {path}: no such file")
        mod_name = f"_jielong_reward_{abs(hash(str(path.resolve())))}"
        loader = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        try:
            loader.loader.exec_module(module)
        except Exception as e:  # the user's file failed: say where and why, in one line
            raise UserError(f"--reward_fn {spec!r}: importing {path} failed: "
                            f"{type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise UserError(f"--reward_fn {spec!r}: cannot import module {where!r} ({e}); "
                            f"{usage}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"--reward_fn {spec!r}: {where} has no function {name!r}")
    return fn


def checked(fn: Reward, label: str) -> Reward:
    """`fn`, with its output checked: one finite number per reply."""

    def call(prompts: list[list[dict]], replies: list[str], items: list[dict]) -> list[float]:
        scores = fn(prompts, replies, items)
        try:
            scores = [float(s) for s in scores]
        except (TypeError, ValueError):
            raise UserError(f"reward {label} must return a list of numbers, got "
                            f"{type(scores).__name__}") from None
        if len(scores) != len(replies):
            raise UserError(f"reward {label} returned {len(scores)} scores for {len(replies)} replies")
        bad = next((s for s in scores if not math.isfinite(s)), None)
        if bad is not None:
            raise UserError(f"reward {label} returned {bad}; rewards must be finite numbers")
        return scores

    return call
