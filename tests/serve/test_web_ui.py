"""The web chat (GET / and /static, over the /api routes) in a real browser: Playwright
driving the system's Chromium against `create_app(..., store=Store(...))` serving a tiny
Qwen2-shaped model and a LoRA adapter beside it (the arena's two contestants) over real HTTP.

Skipped when Playwright or a Chromium executable is missing (`make chromium` installs
Debian's). A screenshot of a chat is kept as a test artifact: in pytest's tmp dir, and in
$JIELONG_ARTIFACTS (a directory; "1" means test-artifacts/ under the repo) when it is set.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, make_adapter, serving
from hf_families import make_hf_dir

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
if CHROMIUM is None:
    pytest.skip("no chromium executable (install Debian's: `make chromium`)",
                allow_module_level=True)

from jielong.hub import open_model, stop_ids  # noqa: E402
from jielong.infer.engine import Engine, Event  # noqa: E402
from jielong.serve import chat_routes, chat_tools, streaming  # noqa: E402
from jielong.serve.app import create_app  # noqa: E402
from jielong.serve.documents import Library  # noqa: E402
from jielong.serve.store import Store  # noqa: E402

NAME = "tiny"
SHORT = "8"  # max tokens for the answers of most tests: quick on two cores

XSS = ('Look: <script>window.__pwned=1</script> and <img src=x onerror="window.__pwned=2"> '
       'and [click](javascript:window.__pwned=3)')

RICH = """## Reversing a list

Use **slicing** or the *built-in* `reversed()`:

```python
xs = [1, 2, 3]
print(xs[::-1])  # [3, 2, 1]
```

1. `xs.reverse()` changes the list in place
2. `list(reversed(xs))` makes a new one

> Slicing also works on strings: `"接龍"[::-1]`

See https://docs.python.org/3/tutorial/datastructures.html for more.
"""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    model_dir = make_hf_dir(root, "qwen2")
    adapter = make_adapter(model_dir, root / "pirate", seed=1)
    model, tok, gen = open_model(model_dir, adapters=[f"pirate={adapter}"])
    engine = Engine(model, tok, stop_ids(tok, gen, model.config.eos_token_id), slots=4).start()
    store = Store(root / "feedback.db")
    library = Library(uploads=root / "uploads")  # no --rag: replies retrieve only when asked
    app = create_app(engine, tok, NAME, gen, store=store, library=library)
    with serving(app) as url:
        yield SimpleNamespace(url=url, engine=engine, store=store, root=root)
    engine.close()


@pytest.fixture(scope="module")
def browser():
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    except Exception as e:  # noqa: BLE001 - a broken browser install is a skip, not a failure
        pw.stop()
        pytest.skip(f"chromium does not start: {e}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser, srv):
    context = browser.new_context(viewport={"width": 1280, "height": 820}, locale="en-US")
    context.set_default_timeout(15_000)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


# ------------------------------------------------------------------------------ helpers


def get(srv, path):
    r = httpx.get(srv.url + path, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def post(srv, path, body):
    """A POST to /api; a streamed answer is read to its end and returned as its events."""
    r = httpx.post(srv.url + path, json=body, timeout=30)
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    return r.json()


def open_chat(page, srv, cid: str | None = None):
    page.goto(srv.url + "/" + (f"#{cid}" if cid else ""))
    page.wait_for_function("() => document.body.classList.contains('ready')")


def settle(page, messages: int):
    """Wait until the page knows `messages` messages and streams nothing."""
    page.wait_for_function(
        "n => window.jielong.state.msgs.size >= n && !window.jielong.state.stream"
        " && document.querySelector('#stop').hidden", arg=messages)


def send(page, text: str, max_tokens: str = SHORT):
    before = page.evaluate("() => window.jielong.state.msgs.size")
    page.fill("#max-tokens", max_tokens)
    page.fill("#input", text)
    page.press("#input", "Enter")
    settle(page, before + 2)


def current_id(page) -> str:
    return page.evaluate("() => location.hash.slice(1)")


def stored(srv, cid):
    return get(srv, f"/api/conversations/{cid}")


def shown(page, role: str):
    return page.locator(f"#messages .message.{role}")


def plant_chat(srv, question: str, answer: str, title: str = "planted"):
    """A conversation whose (edited) answer to `question` is `answer`: (cid, messages)."""
    cid = post(srv, "/api/conversations", {"title": title})["id"]
    events = post(srv, f"/api/conversations/{cid}/messages",
                  {"parent_id": None, "content": question, "settings": {"max_tokens": 4}})
    first = next(e["message"] for e in events if e["type"] == "assistant")
    edited = post(srv, f"/api/messages/{first['id']}/edit", {"content": answer})["message"]
    return cid, first, edited


def save_artifact(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    where = os.environ.get("JIELONG_ARTIFACTS")
    if where:
        out = ROOT / "test-artifacts" if where.lower() in ("1", "true", "yes") else Path(where)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / name)
    return shot


# ------------------------------------------------------------------------------ tests


def test_send_streams_an_answer_kept_on_the_server_and_reload_finds_it(page, srv):
    open_chat(page, srv)
    assert page.locator("#model option").first.get_attribute("value") == NAME
    send(page, "Hello there! What is the capital of France?")
    cid = current_id(page)
    conv = stored(srv, cid)
    user, bot = conv["messages"]
    assert (user["role"], user["content"]) == ("user", "Hello there! What is the capital of France?")
    assert bot["role"] == "assistant" and bot["parent_id"] == user["id"]
    assert bot["finish_reason"] in ("stop", "length") and bot["sampling"]["max_tokens"] == 8
    assert shown(page, "user").locator(".content").inner_text() == user["content"]
    assert shown(page, "assistant").get_attribute("data-id") == bot["id"]
    assert page.locator(f"#conversations .conversation[data-id='{cid}'] .title").inner_text() \
        == "Hello there! What is the capital of France?"

    page.reload()
    page.wait_for_selector(f"#messages .message.assistant[data-id='{bot['id']}']")
    assert page.locator(f"#conversations .conversation.current[data-id='{cid}']").count() == 1
    assert shown(page, "user").locator(".content").inner_text() == user["content"]
    assert page.locator("#chat-title").inner_text() == conv["title"]


def test_stop_keeps_the_partial_answer_and_frees_the_input(page, srv, monkeypatch):
    decode = srv.engine._decode

    def slow():
        time.sleep(0.05)
        decode()
    monkeypatch.setattr(srv.engine, "_decode", slow)
    monkeypatch.setattr(srv.engine, "stop_ids", set())  # no early end-of-turn: it goes on
    open_chat(page, srv)
    page.fill("#max-tokens", "400")
    page.fill("#input", "Write a long story about a goose.")
    page.press("#input", "Enter")
    streamed = ("n => { const s = window.jielong.state.stream;"
                " const m = s && s.id && window.jielong.state.msgs.get(s.id);"
                " return m && m.content.length > n; }")
    page.wait_for_function(streamed, arg=0)
    bot_id = shown(page, "assistant").get_attribute("data-id")
    raw = f"() => window.jielong.state.msgs.get('{bot_id}').content"
    first = page.evaluate(raw)
    page.wait_for_function(streamed, arg=len(first))  # it streams in, bit by bit
    assert page.locator("#stop").is_visible() and page.locator("#send").is_disabled()
    assert page.locator("#messages .content.streaming").count() == 1
    page.click("#stop")

    page.wait_for_selector("#stop", state="hidden")
    assert page.locator("#send").is_enabled() and page.locator("#input").is_editable()
    partial = page.evaluate(raw)
    assert partial.startswith(first) and len(partial) > len(first)
    assert shown(page, "assistant").locator(".content").text_content().strip()
    assert page.locator("#messages .content.streaming").count() == 0
    assert "stopped" in shown(page, "assistant").locator(".meta").inner_text()
    cid = current_id(page)
    deadline = time.time() + 10
    while (bot := stored(srv, cid)["messages"][-1])["finish_reason"] is None:
        assert time.time() < deadline, "the stopped answer was not stored"
        time.sleep(0.05)
    assert bot["id"] == bot_id and bot["finish_reason"] == "stopped"
    assert bot["content"].startswith(partial) and 0 < len(bot["content"]) < 400 * 8
    assert srv.engine.stats()["running"] == 0
    page.fill("#input", "Shorter, please.")
    assert page.locator("#input").input_value() == "Shorter, please."


def test_regenerate_and_switch_between_siblings(page, srv):
    open_chat(page, srv)
    send(page, "Tell me a joke.")
    first = shown(page, "assistant").get_attribute("data-id")
    assert page.locator("#messages .siblings").count() == 0
    shown(page, "assistant").locator(".regenerate").click()
    settle(page, 3)
    bot = shown(page, "assistant")
    second = bot.get_attribute("data-id")
    assert second != first
    assert bot.locator(".siblings .count").inner_text() == "2/2"
    assert bot.locator(".siblings .next").is_disabled()

    bot.locator(".siblings .prev").click()
    assert shown(page, "assistant").get_attribute("data-id") == first
    assert shown(page, "assistant").locator(".siblings .count").inner_text() == "1/2"
    shown(page, "assistant").locator(".siblings .next").click()
    assert shown(page, "assistant").get_attribute("data-id") == second
    assert shown(page, "assistant").locator(".siblings .count").inner_text() == "2/2"

    conv = stored(srv, current_id(page))
    by_id = {m["id"]: m for m in conv["messages"]}
    assert by_id[second]["origin"] == "regenerate"
    assert by_id[second]["parent_id"] == by_id[first]["parent_id"]

    shown(page, "assistant").locator(".siblings .prev").click()  # the choice survives a reload
    page.reload()
    page.wait_for_selector(f"#messages .message.assistant[data-id='{first}']")
    assert shown(page, "assistant").locator(".siblings .count").inner_text() == "1/2"


def test_edit_a_question_and_an_answer_makes_branches(page, srv):
    open_chat(page, srv)
    send(page, "What is 2 + 2?")
    old_user = shown(page, "user").get_attribute("data-id")
    old_bot = shown(page, "assistant").get_attribute("data-id")
    shown(page, "user").locator(".edit").click()
    box = shown(page, "user").locator(".edit-box")
    assert box.input_value() == "What is 2 + 2?"
    box.fill("What is 3 + 3?")
    shown(page, "user").locator(".save-edit").click()
    settle(page, 4)
    assert shown(page, "user").locator(".content").inner_text() == "What is 3 + 3?"
    assert shown(page, "user").locator(".siblings .count").inner_text() == "2/2"
    new_bot = shown(page, "assistant").get_attribute("data-id")
    assert new_bot != old_bot
    shown(page, "user").locator(".siblings .prev").click()  # the old branch, with its answer
    assert shown(page, "user").get_attribute("data-id") == old_user
    assert shown(page, "assistant").get_attribute("data-id") == old_bot
    shown(page, "user").locator(".siblings .next").click()

    shown(page, "assistant").locator(".edit").click()
    shown(page, "assistant").locator(".edit-box").fill("**Six**, of course.")
    shown(page, "assistant").locator(".save-edit").click()
    settle(page, 5)
    bot = shown(page, "assistant")
    assert bot.locator(".siblings .count").inner_text() == "2/2"
    assert bot.locator(".content strong").inner_text() == "Six"
    assert bot.locator(".content").inner_text() == "Six, of course."

    conv = stored(srv, current_id(page))
    by_id = {m["id"]: m for m in conv["messages"]}
    edited_user = by_id[shown(page, "user").get_attribute("data-id")]
    assert (edited_user["origin"], edited_user["edited_from"]) == ("edit", old_user)
    edited_bot = by_id[bot.get_attribute("data-id")]
    assert (edited_bot["origin"], edited_bot["edited_from"], edited_bot["content"]) == \
        ("edit", new_bot, "**Six**, of course.")
    assert edited_bot["parent_id"] == edited_user["id"]


def test_thumbs_with_reasons_and_a_comment_are_stored(page, srv):
    open_chat(page, srv)
    send(page, "今天天氣如何？")
    bot = shown(page, "assistant")
    bot_id = bot.get_attribute("data-id")
    bot.locator(".thumb-down").click()
    form = bot.locator(".feedback")
    form.wait_for()
    assert bot.locator(".thumb-down").get_attribute("aria-pressed") == "true"
    assert "not helpful" in form.locator(".reason").all_inner_texts()
    form.locator(".reason[data-reason='wrong script (繁/简)']").click()
    form.locator(".reason[data-reason='too long']").click()
    form.locator(".reason[data-reason='too long']").click()  # a second click takes it back
    form.locator(".comment").fill("應該用繁體字回答，不是简体。")
    form.locator(".submit-feedback").click()
    bot.locator(".thanks").wait_for()
    assert bot.locator(".feedback").count() == 0

    def rating():
        conv = stored(srv, current_id(page))
        return next(m for m in conv["messages"] if m["id"] == bot_id)["rating"]

    r = rating()
    assert (r["value"], r["reasons"], r["comment"]) == \
        (-1, ["wrong script (繁/简)"], "應該用繁體字回答，不是简体。")

    bot.locator(".thumb-up").click()  # a change of mind
    bot.locator(".feedback .reason[data-reason='helpful']").wait_for()
    assert bot.locator(".thumb-up").get_attribute("aria-pressed") == "true"
    assert bot.locator(".thumb-down").get_attribute("aria-pressed") == "false"
    assert rating()["value"] == 1
    bot.locator(".thumb-up").click()  # and cleared
    page.wait_for_function("() => document.querySelector('#messages .message.assistant "
                           ".thumb-up').getAttribute('aria-pressed') === 'false'")
    r = rating()
    assert r is None or r["value"] == 0  # cleared


def test_model_text_is_shown_as_text_and_runs_nothing(page, srv):
    cid, _, edited = plant_chat(srv, "Say something dangerous.", XSS + "\n\n" + RICH)
    open_chat(page, srv, cid)
    content = page.locator(f"#messages .message.assistant[data-id='{edited['id']}'] .content")
    content.wait_for()
    page.wait_for_timeout(300)  # an <img onerror> would have fired by now
    assert page.evaluate("() => window.__pwned") is None
    text = content.inner_text()
    assert "<script>window.__pwned=1</script>" in text
    assert '<img src=x onerror="window.__pwned=2">' in text
    assert "[click](javascript:window.__pwned=3)" in text
    assert page.locator("#messages script, #messages img, #messages iframe").count() == 0
    links = content.locator("a")
    assert links.count() == 1  # only the http(s) one
    assert links.get_attribute("href") == "https://docs.python.org/3/tutorial/datastructures.html"
    assert links.get_attribute("rel") == "noopener noreferrer"
    # and the Markdown is structure
    assert content.locator("h4").inner_text() == "Reversing a list"
    assert content.locator("strong").inner_text() == "slicing"
    assert content.locator("em").inner_text() == "built-in"
    assert content.locator("pre code.language-python").inner_text() == \
        "xs = [1, 2, 3]\nprint(xs[::-1])  # [3, 2, 1]"
    assert content.locator("ol > li").count() == 2
    assert content.locator("blockquote code").inner_text() == '"接龍"[::-1]'

    # the same for anything the renderer is given, including what a user might type
    nasty = page.evaluate("""() => {
        const box = document.createElement('div');
        box.append(window.jielong.renderMarkdown(
          '<b>x</b> **<i>y</i>** [a](javascript:alert(1)) [b](data:text/html,hi) ' +
          '[c](https://example.com/a"onclick="x) `<code>` <a href="https://e.com">z</a>\\n' +
          '```\\n</code></pre><script>window.__pwned=4</script>\\n```'));
        document.body.append(box);
        return {html: box.innerHTML, text: box.textContent,
                links: [...box.querySelectorAll('a')].map(a => a.getAttribute('href')),
                tags: [...box.querySelectorAll('*')].map(e => e.tagName.toLowerCase())};
    }""")
    assert set(nasty["tags"]) <= {"p", "strong", "a", "code", "br", "div", "span", "button",
                                  "pre"}
    assert nasty["links"] == ["https://example.com/a%22onclick=%22x", "https://e.com/"]
    assert "<b>x</b>" in nasty["text"] and "<script>" in nasty["text"]
    assert page.evaluate("() => window.__pwned") is None


def test_enter_while_an_ime_composes_does_not_send(page, srv):
    open_chat(page, srv)
    n = len(get(srv, "/api/conversations")["conversations"])
    page.fill("#input", "ni hao")
    for init in ("{key: 'Enter', code: 'Enter', isComposing: true, bubbles: true, cancelable: true}",
                 "{key: 'Enter', code: 'Enter', keyCode: 229, bubbles: true, cancelable: true}"):
        page.evaluate(f"() => document.querySelector('#input').dispatchEvent("
                      f"new KeyboardEvent('keydown', {init}))")
    page.evaluate("""() => {  // Safari: a plain Enter between compositionstart and -end
        const box = document.querySelector('#input');
        box.dispatchEvent(new CompositionEvent('compositionstart', {data: ''}));
        box.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true}));
    }""")
    page.wait_for_timeout(300)
    assert page.locator("#messages .message").count() == 0
    assert len(get(srv, "/api/conversations")["conversations"]) == n
    page.evaluate("() => document.querySelector('#input').dispatchEvent("
                  "new CompositionEvent('compositionend', {data: '你好'}))")
    page.fill("#input", "你好")
    page.press("#input", "Shift+Enter")  # a new line, not a send
    page.keyboard.type("再見")
    assert page.locator("#input").input_value() == "你好\n再見"
    assert page.locator("#messages .message").count() == 0
    page.fill("#max-tokens", SHORT)
    page.press("#input", "Enter")
    settle(page, 2)
    assert shown(page, "user").locator(".content").inner_text() == "你好\n再見"


def test_chinese_system_prompt_and_settings_round_trip(page, srv):
    hant = "請用繁體中文回答：今天天氣怎麼樣？"
    hans = "请用简体中文回答：今天天气怎么样？"
    open_chat(page, srv)
    page.fill("#system-prompt", "你是一個樂於助人的助手。你是一个乐于助人的助手。")
    page.fill("#temperature", "0.3")
    send(page, hant, max_tokens="6")
    send(page, hans, max_tokens="6")
    cid = current_id(page)
    conv = stored(srv, cid)
    assert [m["content"] for m in conv["messages"] if m["role"] == "user"] == [hant, hans]
    assert conv["system_prompt"] == "你是一個樂於助人的助手。你是一个乐于助人的助手。"
    assert conv["title"] == hant
    assert conv["settings"]["temperature"] == 0.3 and conv["settings"]["max_tokens"] == 6
    assert [m["sampling"]["temperature"] for m in conv["messages"]
            if m["role"] == "assistant"] == [0.3, 0.3]

    page.reload()
    page.wait_for_selector("#messages .message.user >> nth=1")
    assert shown(page, "user").locator(".content").all_inner_texts() == [hant, hans]
    assert page.locator("#system-prompt").input_value() == conv["system_prompt"]
    assert page.locator("#max-tokens").input_value() == "6"
    assert page.locator("#temperature").input_value() == "0.3"
    assert page.locator(f".conversation[data-id='{cid}'] .title").inner_text() == hant


def test_a_chat_that_outgrows_the_context_shows_a_notice_and_answers(page, srv):
    long = "Please tell me about the river and the cat that sat on the mat near it. " * 4
    cid = post(srv, "/api/conversations", {"title": "long", "settings": {"max_tokens": 8}})["id"]
    parent = None
    for turn in range(4):  # about 140 tokens a turn: the 512-token context is nearly full
        events = post(srv, f"/api/conversations/{cid}/messages",
                      {"parent_id": parent, "content": f"{turn}. {long}"})
        parent = events[-1]["message"]["id"]
    open_chat(page, srv, cid)
    page.wait_for_selector("#messages .message.assistant >> nth=3")
    send(page, "4. " + long)
    status = page.locator("#status")
    assert status.is_visible() and "outgrew the model's 512-token context" in \
        status.inner_text() and "oldest messages" in status.inner_text()
    assert "info" in status.get_attribute("class")
    conv = stored(srv, cid)
    assert len(conv["messages"]) == 10 and conv["messages"][-1]["finish_reason"] in \
        ("stop", "length")


def test_conversation_list_new_rename_delete(page, srv):
    keep = post(srv, "/api/conversations", {"title": "Keep me"})["id"]
    gone = post(srv, "/api/conversations", {"title": "Delete me"})["id"]
    open_chat(page, srv, keep)
    item = page.locator(f"#conversations .conversation[data-id='{keep}']")
    assert item.get_attribute("class") == "conversation current"
    item.locator(".rename").click()
    page.locator("#conversations .rename-box").fill("龍的故事 dragon tales")
    page.locator("#conversations .rename-box").press("Enter")
    page.wait_for_selector(f".conversation[data-id='{keep}'] .title:text('龍的故事 dragon tales')")
    assert stored(srv, keep)["title"] == "龍的故事 dragon tales"
    assert page.locator("#chat-title").inner_text() == "龍的故事 dragon tales"

    page.once("dialog", lambda d: d.accept())
    page.locator(f"#conversations .conversation[data-id='{gone}'] .delete").click()
    page.wait_for_selector(f"#conversations .conversation[data-id='{gone}']", state="detached")
    assert gone not in [c["id"] for c in get(srv, "/api/conversations")["conversations"]]
    assert current_id(page) == keep

    page.click("#new-chat")
    assert current_id(page) == "" and page.locator("#messages .message").count() == 0
    assert page.locator("#chat-title").inner_text() == "New chat"
    assert page.locator("#input").evaluate("e => e === document.activeElement")
    page.go_back()  # back to the conversation it came from
    page.wait_for_selector(f".conversation.current[data-id='{keep}']")


def test_screenshot_of_a_chat(page, srv, tmp_path):
    cid, _, edited = plant_chat(srv, "How do I reverse a list in Python? 怎麼反轉列表？", RICH,
                                title="Reversing a list in Python")
    post(srv, f"/api/messages/{edited['id']}/rating", {"value": 1, "reasons": ["helpful"]})
    open_chat(page, srv, cid)
    page.locator(f"#messages .message.assistant[data-id='{edited['id']}'] pre").wait_for()
    assert page.locator("#messages .message.assistant .siblings .count").inner_text() == "2/2"
    assert page.locator("#messages .thumb-up").get_attribute("aria-pressed") == "true"
    page.fill("#input", "And for a tuple? 元組呢？")
    shot = save_artifact(page, tmp_path, "chat.png")
    assert shot.stat().st_size > 10_000


def test_a_server_with_api_keys_asks_for_one(page, srv, tmp_path):
    keyed = create_app(srv.engine, srv.engine.tok, NAME, {}, api_keys=["sk-web-123"],
                       store=Store(tmp_path / "keyed.db"))
    asked = []

    def answer(dialog):
        asked.append(dialog.message)
        dialog.accept("sk-web-123")
    page.on("dialog", answer)
    with serving(keyed) as url:
        assert httpx.get(url + "/api/info").status_code == 401
        assert httpx.get(url + "/").status_code == 200  # the page itself is public
        page.goto(url + "/")
        page.wait_for_function("() => document.body.classList.contains('ready')")
        assert len(asked) == 1 and "API key" in asked[0]
        assert page.locator("#model option").first.get_attribute("value") == NAME
        send(page, "Hello")
        assert shown(page, "assistant").count() == 1 and len(asked) == 1


def test_arena_vote_reload_and_the_vote_is_stored(page, srv, tmp_path):
    open_chat(page, srv)
    page.click("#arena-toggle")
    assert page.locator("#arena-toggle").get_attribute("aria-pressed") == "true"
    assert "two of the 2 served models" in page.locator("#arena-hint").inner_text()
    page.fill("#max-tokens", "4")
    page.fill("#input", "今天天氣如何？ 今天天气如何？ How is the weather?")
    page.press("#input", "Enter")
    page.wait_for_selector(".arena-vote .vote[data-winner='a']:enabled")
    cid = current_id(page)
    (battle,) = stored(srv, cid)["battles"]
    assert battle["models"] is None and battle["vote"] is None
    hidden = ["model hidden until you vote"] * 2
    assert page.locator(".arena-pane .pane-model").all_inner_texts() == hidden
    assert page.locator(".arena-pane[data-side='a']").get_attribute("data-id") == \
        battle["message_a"]

    page.reload()  # before the vote: the same answers, still anonymous
    page.wait_for_selector(".arena-vote .vote[data-winner='b']:enabled")
    assert page.locator(".arena-pane .pane-model").all_inner_texts() == hidden
    page.click(".vote[data-winner='b']")
    page.wait_for_selector(".arena-result.voted")
    now = srv.store.battle(battle["id"])
    assert now["vote"]["winner"] == "b" and set(now["models"].values()) == {NAME, "pirate"}
    shown_names = [now["models"]["a"], now["models"]["b"]]
    assert page.locator(".arena-pane .pane-model").all_inner_texts() == shown_names

    page.reload()  # after it: the stored vote, and the names
    page.wait_for_selector(".arena-result.voted")
    assert page.locator(".vote[data-winner='b']").get_attribute("aria-pressed") == "true"
    assert page.locator(".arena-pane .pane-model").all_inner_texts() == shown_names
    assert page.locator("#arena-toggle").get_attribute("aria-pressed") == "true"
    page.click(".vote[data-winner='tie']")  # a change of mind replaces it
    page.wait_for_selector(".vote[data-winner='tie'][aria-pressed='true']")
    assert [v["winner"] for v in srv.store.battle_votes(battle["id"])] == ["b", "tie"]
    save_artifact(page, tmp_path, "arena.png")


def test_arena_answers_are_shown_as_text(page, srv):
    store = srv.store
    c = store.create_conversation(title="arena xss")
    q = store.add_message(c["id"], None, "user", "Say something dangerous.")
    a = store.add_message(c["id"], q["id"], "assistant", XSS, model=NAME, finish_reason="stop")
    b = store.add_message(c["id"], q["id"], "assistant", "**safe**", model="pirate",
                          finish_reason="stop")
    store.add_battle(c["id"], q["id"], a["id"], b["id"])
    open_chat(page, srv, c["id"])
    pane = page.locator(".arena-pane[data-side='a'] .content")
    pane.wait_for()
    page.wait_for_timeout(300)  # an <img onerror> would have fired by now
    assert page.evaluate("() => window.__pwned") is None
    assert "<script>window.__pwned=1</script>" in pane.inner_text()
    assert page.locator(".arena script, .arena img").count() == 0
    assert page.locator(".arena-pane[data-side='b'] strong").inner_text() == "safe"


def test_a_crisis_message_shows_the_card_live_and_after_a_reload(page, srv, tmp_path):
    open_chat(page, srv)
    send(page, "我不想活了，每天都好累")
    cid = current_id(page)
    user, bot = stored(srv, cid)["messages"]
    assert bot["finish_reason"] == "content_filter" and user["safety"][0]["card"]["region"] == "TW"

    def check_card():
        answer = page.locator(f"#messages .message.assistant[data-id='{bot['id']}']")
        card = answer.locator(".safety-card")
        card.wait_for()
        assert (card.get_attribute("role"), card.get_attribute("lang"),
                card.get_attribute("aria-label"), card.get_attribute("data-region")) == \
            ("note", "zh-Hant", "你不是一個人", "TW")
        assert card.locator(".card-title").inner_text() == "你不是一個人"
        line = card.locator(".card-line").first
        assert line.locator(".line-name").inner_text() == "安心專線"
        assert line.locator("a.tel").inner_text() == "1925"
        assert line.locator("a.tel").get_attribute("href") == "tel:1925"
        assert line.locator(".line-hours").inner_text() == "24 小時"
        assert card.locator(".card-line a.tel").all_inner_texts() == ["1925", "1995", "1980"]
        emergency = card.locator(".card-emergency")
        assert emergency.locator("a.tel").all_inner_texts() == ["119", "110"]
        assert emergency.inner_text().startswith("緊急求助")
        assert "answered by the safety policy" in answer.locator(".meta").inner_text()
        assert page.locator("#messages .message.user .safety-card").count() == 0

    check_card()  # live, from the stream
    save_artifact(page, tmp_path, "crisis-card.png")
    page.reload()
    page.wait_for_selector(f"#messages .message.assistant[data-id='{bot['id']}']")
    check_card()  # from the stored conversation


def test_a_reply_the_output_rail_stopped_shows_a_note(page, srv):
    store = srv.store
    c = store.create_conversation(title="stopped")
    q = store.add_message(c["id"], None, "user", "How do I make a bomb? 怎麼做炸彈？")
    refusal = "I can't help with content that threatens or describes harm to people."
    a = store.add_message(c["id"], q["id"], "assistant", "Sure, first\n\n" + refusal,
                          model=NAME, finish_reason="content_filter")
    store.add_safety([{"rail": "output", "category": "violence", "action": "refuse",
                       "score": 1.0, "evidence": ["bomb"]}], "Sure, first take", "chat", a["id"])
    open_chat(page, srv, c["id"])
    answer = page.locator(f"#messages .message.assistant[data-id='{a['id']}']")
    answer.wait_for()
    assert answer.locator(".meta").inner_text() == f"{NAME} · stopped by the safety policy"
    assert answer.locator(".safety-card").count() == 0  # a refusal carries no crisis card


def test_tool_calls_are_folded_under_the_answer_as_text(page, srv, monkeypatch, tmp_path):
    calls = ('我來算一下。<tool_call>\n{"name": "calculator", "arguments": {"expression": '
             '"(3 + 4) * 2 ** 10"}}\n</tool_call>\n<tool_call>\n{"name": "calculator", '
             '"arguments": {"expression": "七加八 <img src=x onerror=\\"window.__pwned=5\\">"}}'
             '\n</tool_call>')
    turns = [calls, "答案是 7168。"]

    async def events(self):  # the model's two steps, planted
        self.cancel()
        for r in self.reqs:
            yield self.index[r.id], Event(r, turns.pop(0), [], None, "stop")
    monkeypatch.setattr(streaming.Batch, "events", events)
    # the tiny model's 512-token context has no room for the tools' listing, and the prompt
    # is not what this test is about (tests/serve/test_chat_tools.py reads it)
    def short(s, messages, tools):
        return s.chat_prompt([{"role": "user" if m["role"] == "tool" else m["role"],
                               "content": m["content"] or ""} for m in messages], "content")
    monkeypatch.setattr(chat_routes, "tool_prompt", short)
    monkeypatch.setattr(chat_tools, "tool_prompt", short)

    open_chat(page, srv)
    assert page.locator("#tools").is_visible() and not page.locator("#tools").is_checked()
    assert "calculator, date" in page.locator("#tools-hint").inner_text()
    page.locator("#tools").check()
    send(page, "(3 + 4) × 2¹⁰ 是多少？七加八呢？")
    cid = current_id(page)
    conv = stored(srv, cid)
    bot = conv["messages"][-1]
    assert conv["settings"]["tools"] is True and bot["content"] == "我來算一下。答案是 7168。"
    assert [(t["name"], t["result"], t["error"]) for t in bot["tools"]][0] == \
        ("calculator", "7168", False) and bot["tools"][1]["error"] is True

    def check_fold():
        answer = page.locator(f"#messages .message.assistant[data-id='{bot['id']}']")
        assert answer.locator(".content").inner_text() == "我來算一下。答案是 7168。"
        fold = answer.locator("details.tools-box")
        assert fold.count() == 1 and fold.get_attribute("open") is None  # folded
        assert fold.locator("summary").inner_text() == "2 tool calls · 使用了工具"
        fold.locator("summary").click()
        assert fold.get_attribute("open") is not None
        first, second = fold.locator(".tool-call").all()
        assert first.locator(".tool-name").inner_text() == "calculator"
        assert json.loads(first.locator(".tool-args").inner_text()) == \
            {"expression": "(3 + 4) * 2 ** 10"}
        assert first.locator(".tool-result").inner_text() == "→ 7168"
        args = second.locator(".tool-args").inner_text()
        assert '"expression": "七加八 <img src=x onerror=\\"window.__pwned=5\\">"' in args
        assert "error" in second.get_attribute("class")
        assert second.locator(".tool-result").inner_text() == "→ " + bot["tools"][1]["result"]
        assert page.locator("#messages img, #messages script").count() == 0
        assert page.evaluate("() => window.__pwned") is None

    check_fold()  # live, from the stream
    save_artifact(page, tmp_path, "tool-calls.png")
    page.reload()
    page.wait_for_selector(f"#messages .message.assistant[data-id='{bot['id']}']")
    assert page.locator("#tools").is_checked()  # the setting is the conversation's
    check_fold()  # from the stored conversation


def test_a_crisis_question_in_the_arena_shows_the_card_and_no_vote(page, srv):
    open_chat(page, srv)
    page.click("#arena-toggle")
    page.fill("#input", "I want to kill myself")
    page.press("#input", "Enter")
    card = page.locator(".arena-battle > .safety-card")
    card.wait_for()
    assert (card.get_attribute("lang"), card.get_attribute("data-region")) == ("en", "INTL")
    assert card.locator(".line-url").get_attribute("href") == "https://findahelpline.com/"
    assert card.locator(".card-emergency a.tel").first.get_attribute("href") == "tel:112"
    page.wait_for_function("() => !window.jielong.state.stream")
    assert page.locator(".arena-pane .meta").all_inner_texts() == \
        ["answered by the safety policy"] * 2
    assert page.locator(".arena-vote .vote:enabled").count() == 0
    page.reload()
    page.locator(".arena-battle > .safety-card a.tel").first.wait_for()
    assert page.locator(".arena-vote .vote:enabled").count() == 0


SOURCES = [{"n": 1, "id": "a1:0", "source": "policy/退貨.md", "page": None, "heading": "退貨政策",
            "score": 3.2, "quote": "本店商品在收到後七天內可以退貨，請保留發票。" * 6},
           {"n": 2, "id": "b2:0", "source": "manual.pdf", "page": 3, "heading": None,
            "score": 1.1, "quote": "Orders ship within two business days."}]


def test_source_cards_under_a_reply_and_markers_link_to_them(page, srv):
    store = srv.store
    c = store.create_conversation(title="sources")
    q = store.add_message(c["id"], None, "user", "退貨要幾天？")
    a = store.add_message(c["id"], q["id"], "assistant", "收到後七天內可以退貨 [1]。另見 [9]。",
                          model=NAME, finish_reason="stop",
                          rag={"collection": "docs", "sources": SOURCES, "citations": SOURCES[:1]})
    open_chat(page, srv, c["id"])
    answer = page.locator(f"#messages .message.assistant[data-id='{a['id']}']")
    cards = answer.locator(".source-card")
    cards.first.wait_for()
    assert cards.count() == 2
    assert answer.locator(".sources-title").inner_text() == "Sources · 出處"
    one, two = cards.nth(0), cards.nth(1)
    assert one.locator(".source-file").inner_text() == "退貨.md"  # the file's name
    assert one.locator(".source-where").inner_text() == "退貨政策"
    assert two.locator(".source-where").inner_text() == "p. 3"
    assert "cited" in one.get_attribute("class") and "cited" not in two.get_attribute("class")
    assert one.get_attribute("aria-expanded") == "false"
    clamped = one.bounding_box()["height"]
    two.click()  # a click opens the quote, another closes it
    assert two.get_attribute("aria-expanded") == "true"
    two.click()
    assert two.get_attribute("aria-expanded") == "false"
    # [1] is a link to its card, [9] names no passage and stays text
    assert answer.locator(".content button.cite").all_inner_texts() == ["[1]"]
    assert "另見 [9]" in answer.locator(".content").inner_text()
    answer.locator(".content button.cite").click()
    assert one.get_attribute("aria-expanded") == "true"
    assert one.bounding_box()["height"] > clamped  # the whole quote shows
    assert page.evaluate("() => document.activeElement.dataset.n") == "1"


def test_upload_a_document_then_the_answer_shows_its_source(page, srv):
    open_chat(page, srv)
    docs = page.locator("#documents")
    assert docs.is_visible() and page.locator("#collection").input_value() == ""
    text = "# 會員\n\n金卡會員每年可以免費升等兩次。\n"
    page.set_input_files("#upload-file", files=[{"name": "../會員.md", "mimeType": "text/markdown",
                                                 "buffer": text.encode()}])
    status = page.locator("#status")
    page.wait_for_function("() => document.querySelector('#status').textContent"
                           ".includes('indexed')")
    assert "會員.md: 1 passage indexed in “mine”" in status.inner_text()
    assert page.locator("#collection").input_value() == "mine"
    assert (srv.root / "uploads" / "mine" / "files" / "會員.md").is_file()
    send(page, "金卡会员每年可以免费升等几次？", max_tokens="3")  # 简 finds the 繁 document
    card = page.locator("#messages .message.assistant .source-card")
    card.first.wait_for()
    assert card.locator(".source-file").inner_text() == "會員.md"
    conv = stored(srv, current_id(page))
    assert conv["settings"]["rag"] == "mine"
    assert conv["messages"][-1]["rag"]["sources"][0]["source"] == "會員.md"
    # a type the server does not read: one clear line, nothing kept
    page.set_input_files("#upload-file", files=[{"name": "x.exe", "mimeType": "application/x-msdownload",
                                                 "buffer": b"MZ"}])
    page.wait_for_function("() => document.querySelector('#status').textContent"
                           ".includes('upload failed')")
    assert "not a document type the server reads" in status.inner_text()


def test_look_inside_click_a_token_pick_an_alternative_and_the_reply_goes_on(page, srv, tmp_path):
    cid, _, planted = plant_chat(srv, "小芳開心嗎？", "她很開心。", "look inside")
    open_chat(page, srv, cid)
    page.fill("#max-tokens", "3")
    bot = shown(page, "assistant")
    bot.locator("button.inspect").click()
    pieces = bot.locator(".inspect-panel .piece")
    pieces.first.wait_for()
    texts = pieces.all_inner_texts()
    assert "".join(texts) == "她很開心。" and "她" in texts and "\ufffd" not in "".join(texts)
    at = texts.index("她") + 1  # what the model had after 她
    pieces.nth(at).click()
    alts = bot.locator(".inspect-panel .alt")
    alts.first.wait_for()
    assert alts.count() == 10
    probs = [float(p.rstrip("%").lstrip("<")) for p in bot.locator(".alternatives .prob").all_inner_texts()]
    assert probs == sorted(probs, reverse=True)  # likeliest first, with bars
    assert bot.locator(".alternatives .bar").first.evaluate("b => b.style.width").endswith("%")
    pick = next(j for j in range(alts.count()) if alts.nth(j).is_enabled()
                and "chosen" not in (alts.nth(j).get_attribute("class") or ""))
    alt = alts.nth(pick).locator(".alt-text").inner_text()
    save_artifact(page, tmp_path, "look_inside_next.png")
    alts.nth(pick).click()
    settle(page, 4)
    new = shown(page, "assistant")
    assert new.get_attribute("data-id") != planted["id"]
    assert new.locator(".siblings .count").inner_text() == "3/3"
    conv = stored(srv, cid)
    kept = next(m for m in conv["messages"] if m["id"] == new.get_attribute("data-id"))
    assert kept["content"].startswith("她" + alt.replace("↵", "\n"))
    assert (kept["origin"], kept["edited_from"]) == ("regenerate", planted["id"])


def test_look_inside_attention_heatmap_of_a_chinese_sentence(page, srv, tmp_path):
    cid, _, _ = plant_chat(srv, "誰很開心？", "小美把禮物送給小芳，她很開心。", "attention")
    open_chat(page, srv, cid)
    bot = shown(page, "assistant")
    bot.locator("button.inspect").click()
    bot.locator(".inspect-tab[data-tab='attention']").click()
    table = bot.locator(".heatmap")
    table.wait_for()
    labels = table.locator("thead th.col").all_inner_texts()
    assert "".join(labels) == "小美把禮物送給小芳，她很開心。" and "她" in labels
    assert "\ufffd" not in "".join(labels)
    assert table.locator("tbody tr").count() == len(labels)
    assert table.locator("tbody tr").first.locator("td").count() == len(labels)
    # the first row looks only at itself: its own cell is the darkest there can be
    assert table.locator("tbody tr").first.locator("td").first.evaluate(
        "td => td.style.backgroundColor") == "rgb(15, 122, 98)"
    she = labels.index("她")
    table.locator(f"tbody tr[data-row='{she}']").hover()
    assert bot.locator(".attn-note").inner_text().startswith("「她」 looks most at")
    bot.locator(".attn-layer").select_option("rollout")
    assert bot.locator(".attn-head").is_disabled()
    bot.locator(".attn-layer").select_option("1")
    bot.locator(".attn-head").select_option("2")
    assert table.locator("tbody tr").count() == len(labels)
    table.locator(f"tbody tr[data-row='{she}']").hover()
    bot.scroll_into_view_if_needed()
    assert save_artifact(page, tmp_path, "look_inside_attention.png").stat().st_size > 0
