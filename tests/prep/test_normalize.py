"""Text normalisation (`jielong.prep.normalize`): mojibake repaired, full-width punctuation
and emoji kept."""


from test_data_clean import (
    doc,
)

from jielong.prep.normalize import Normalize, normalize_text


def test_normalize_keeps_full_width_punctuation_and_emoji():
    punct = "（），。！？：；「」『』、《》“中文引號”‘單引號’ＡＢＣ１２３"
    assert normalize_text(punct) == punct  # ftfy's defaults would make these ASCII
    messy = ("\ufeff  第一段：　你好（測試）！\x07\u200b  \r\n\r\n\r\n\r\n"
             "Hello    world\t\tagain   \n"
             "mojibake: cafÃ© â€œquotedâ€\x9d and &amp; entity\n"
             "e\u0301 composed, 👩\u200d💻 ❤\ufe0f 🇹🇼 kept\n\n\n")
    assert normalize_text(messy) == (
        "  第一段：　你好（測試）！\n\n"
        "Hello world again\n"
        "mojibake: café “quoted” and & entity\n"
        "é composed, 👩\u200d💻 ❤\ufe0f 🇹🇼 kept")
    out = list(Normalize()([doc("（好）  ！\n\n\n\n結束。")]))
    assert out[0].text == "（好） ！\n\n結束。"
