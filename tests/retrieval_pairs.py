"""A toy retrieval set in 繁體, 简体 and English: each passage tells where one made-up person
lives and what they keep; its questions name the person. Names differ from passage to
passage, so retrieval is learnt as "find the passage that names this person"."""

from __future__ import annotations

SURNAMES = "陳林黃張李王吳劉蔡楊許鄭謝郭洪曾"
GIVEN = "明華英美德志文玉"
CITIES = ["臺北", "高雄", "花蓮", "臺南"]
CITIES_HANS = ["北京", "上海", "广州", "成都"]
ANIMALS = ["貓", "狗", "鵝", "魚"]
EN_NAMES = ["alice", "bruno", "chen", "dora", "emil", "fatima", "gus", "hana", "ivan", "jun",
            "kofi", "lena", "milo", "nadia", "omar", "pia"]
EN_PLACES = ["oslo", "lima", "pune", "kyoto"]
EN_PETS = ["cat", "dog", "goose", "fish"]


def toy_pairs(n: int = 16) -> list[dict]:
    """3n query/passage lines: n 繁, n 简, n English passages with two questions each."""
    rows = []
    for i in range(n):
        name = SURNAMES[i % len(SURNAMES)] + GIVEN[(i + i // len(SURNAMES)) % len(GIVEN)]  # distinct for i < 128
        city, pet = CITIES[i % 4], ANIMALS[(i // 4) % 4]
        p = f"{name}住在{city}，養了一隻{pet}。"
        rows += [{"query": f"{name}住在哪裡？", "passage": p}, {"query": f"{name}養了什麼？", "passage": p}]
        name_s = name.translate(str.maketrans("陳黃張劉楊許鄭謝郭華", "陈黄张刘杨许郑谢郭华")) + "儿"
        p = f"{name_s}住在{CITIES_HANS[i % 4]}，养了一只{pet}。"
        rows += [{"query": f"{name_s}住在哪里？", "passage": p}, {"query": f"{name_s}养了什么？", "passage": p}]
        en = EN_NAMES[i % len(EN_NAMES)] + ("" if i < len(EN_NAMES) else "abcdefg"[i // len(EN_NAMES) - 1])
        p = f"{en} lives in {EN_PLACES[i % 4]} and keeps a {EN_PETS[(i // 4) % 4]}."
        rows += [{"query": f"where does {en} live?", "passage": p}, {"query": f"what does {en} keep?", "passage": p}]
    return rows
