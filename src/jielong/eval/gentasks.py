"""Generation tasks for `jielong eval`: what `--tasks` names, the files they are read from, and
the prompt each question gets, in the script of its readers.

Task names (comma-separated in `--tasks`, beside the multiple-choice benchmarks):
- `drcd`: DRCD's dev set, DATA/drcd-dev.json (or its published name DRCD_dev.json), extractive
  QA in Traditional Chinese; `cmrc2018`: CMRC 2018's, DATA/cmrc2018-dev.json (or
  cmrc2018_dev.json), in Simplified Chinese;
- `squad:FILE.json`: any SQuAD-style file (data → paragraphs → context, qas → id, question,
  answers[text, answer_start]);
- `translate:FILE.jsonl`: rows {"source", "target"} (or {"src", "ref"}, {"src", "tgt"});
  `translate:A-B:FILE.jsonl` translates field A into field B, e.g. `translate:zh-en:wmt.jsonl`
  for rows {"zh", "en"} or {"translation": {"zh", "en"}} (Hugging Face's WMT layout), and
  `translate:target-source:FILE` the other way round;
- `summarize:FILE.jsonl`: rows {"text", "summary"} ("document", "article" or "content" for the
  text; "highlights" or "abstract" for the summary);
- `classify:FILE.jsonl`: rows {"text", "label"}; the labels are those the file holds, in the
  order they first appear, and the prompt lists them;
- `closedbook:FILE.jsonl`: rows {"question", "answers": [...]} (or "answer": "..."), asked
  without a passage; the prompt allows "I don't know".
A task's name in the results is `drcd`, `cmrc2018`, or KIND:STEM of its file.

Language: a file's language (English, Traditional or Simplified Chinese) is read from its
text (`jielong.tokenizer.doc_kind` over its first questions; for translation the target's),
DRCD's is Traditional and CMRC's Simplified. The prompt is written in that language, so a
reader of Traditional Chinese is asked in Traditional Chinese.

Prompt: an instruction and the input (`GenItem.text`), sent as the user's message through the
model's chat template; without a template (or with `--chat off`) the text is followed by a
line break and an answer cue ("答案：", "Answer:"), a plain completion prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jielong.data.readers import iter_records
from jielong.errors import UserError
from jielong.eval.metrics import sacrebleu_module
from jielong.eval.qa import read_squad
from jielong.tokenizer import doc_kind

KINDS = ("squad", "translate", "summarize", "classify", "closedbook")
NAMED = {"drcd": ("drcd-dev.json", "DRCD_dev.json", "zh-Hant"),
         "cmrc2018": ("cmrc2018-dev.json", "cmrc2018_dev.json", "zh-Hans")}
LANGS = ("en", "zh-Hant", "zh-Hans")
# New tokens per reply when --max_new_tokens is not given: an answer span, a label or a
# letter is short; a translation or a summary a sentence or two.
MAX_NEW_TOKENS = {"choice": 32, "squad": 64, "closedbook": 64, "classify": 32,
                  "translate": 256, "summarize": 128}


@dataclass
class GenItem:
    where: str  # file:line, or file#id for a SQuAD question
    text: str  # the instruction and the input: the user's message
    cue: str  # what follows a plain prompt's line break: "答案：", "Answer:" …
    answers: list[str]  # gold answers, the reference, or the label
    shots: list[tuple[str, str]] = field(default_factory=list)  # solved (message, reply) before it
    plain: str | None = None  # a plain prompt of its own (multiple choice: lm-eval's context)
    subject: str = ""  # multiple choice: the subject it belongs to
    letters: str = ""  # multiple choice: its choices' letters, "ABCD"


@dataclass
class GenTask:
    name: str
    kind: str  # choice (a multiple-choice benchmark, generated) or one of KINDS
    path: Path
    lang: str  # one of LANGS
    items: list[GenItem]
    labels: list[str] = field(default_factory=list)  # classify: the classes
    categories: dict[str, list[str]] = field(default_factory=dict)  # choice: subject → categories
    direction: str = ""  # translate: "source→target" (field names)


# ----------------------------------------------------------------------------- prompts

CUES = {  # kind → language → the answer cue of a plain prompt
    "squad": {"zh-Hant": "答案：", "zh-Hans": "答案：", "en": "Answer:"},
    "closedbook": {"zh-Hant": "答案：", "zh-Hans": "答案：", "en": "Answer:"},
    "translate": {"zh-Hant": "譯文：", "zh-Hans": "译文：", "en": "Translation:"},
    "summarize": {"zh-Hant": "摘要：", "zh-Hans": "摘要：", "en": "Summary:"},
    "classify": {"zh-Hant": "類別：", "zh-Hans": "类别：", "en": "Category:"},
}
INSTRUCTIONS = {
    "squad": {
        "zh-Hant": "請根據文章回答問題，直接從文章中摘錄答案，越短越好。\n\n文章：{context}\n\n問題：{question}",
        "zh-Hans": "请根据文章回答问题，直接从文章中摘录答案，越短越好。\n\n文章：{context}\n\n问题：{question}",
        "en": "Answer the question with a short span copied from the passage.\n\n"
              "Passage: {context}\n\nQuestion: {question}"},
    "closedbook": {
        "zh-Hant": "請回答下面的問題，只給出答案。如果不知道，請回答「我不知道」。\n\n問題：{question}",
        "zh-Hans": "请回答下面的问题，只给出答案。如果不知道，请回答“我不知道”。\n\n问题：{question}",
        "en": "Answer the question briefly. If you do not know the answer, say \"I don't know\".\n\n"
              "Question: {question}"},
    "translate": {
        "zh-Hant": "將下面的{src}翻譯成{tgt}，只輸出譯文。\n\n{text}",
        "zh-Hans": "将下面的{src}翻译成{tgt}，只输出译文。\n\n{text}",
        "en": "Translate the following {src} text into {tgt}. Output only the translation.\n\n{text}"},
    "summarize": {
        "zh-Hant": "請用一兩句話概括下面這段文字。\n\n{text}",
        "zh-Hans": "请用一两句话概括下面这段文字。\n\n{text}",
        "en": "Summarize the following text in one or two sentences.\n\n{text}"},
    "classify": {
        "zh-Hant": "下面這段文字屬於哪一類？類別：{labels}。只回答類別名稱。\n\n{text}",
        "zh-Hans": "下面这段文字属于哪一类？类别：{labels}。只回答类别名称。\n\n{text}",
        "en": "Which category does the following text belong to? Categories: {labels}. "
              "Answer with the category name only.\n\n{text}"},
}
LANG_NAMES = {  # the language a prompt is written in → each language's name in it
    "zh-Hant": {"en": "英文", "zh-Hant": "繁體中文", "zh-Hans": "簡體中文"},
    "zh-Hans": {"en": "英文", "zh-Hant": "繁体中文", "zh-Hans": "简体中文"},
    "en": {"en": "English", "zh-Hant": "Traditional Chinese", "zh-Hans": "Simplified Chinese"},
}


def language(texts: list[str]) -> str:
    """en, zh-Hant or zh-Hans, by the script of the texts (the first 50); Chinese whose
    script is unclear counts as Simplified."""
    kind = doc_kind("\n".join(texts[:50])) or "en"
    return {"zh": "zh-Hans"}.get(kind, kind)


def plain_prompt(item: GenItem) -> str:
    """The completion prompt for a model without a chat template."""
    return item.plain if item.plain is not None else f"{item.text}\n{item.cue}"


def messages(item: GenItem) -> list[dict]:
    """The conversation for a chat template: solved examples as earlier turns, then the item."""
    out = []
    for question, reply in item.shots:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return out + [{"role": "user", "content": item.text}]


# ----------------------------------------------------------------------------- reading

def is_generation(name: str) -> bool:
    """`name` is a generation task (a named one or KIND:FILE), not a multiple-choice one."""
    kind, sep, _ = name.partition(":")
    return name in NAMED or (bool(sep) and kind in KINDS)


def split_tasks(names: str, data: str | Path, limit: int | None = None) -> tuple[str, list[GenTask]]:
    """(the multiple-choice names, comma-joined, for `benchmarks.tasks_from`; the generation
    tasks, every file read and checked, at most `limit` questions each)."""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise UserError(f"--tasks {names!r}: name at least one task (cmmlu, ceval, mmlu, tmmluplus, "
                        f"{', '.join(NAMED)}, a folder of CSVs or KIND:FILE)")
    gen, seen = [], set()
    for n in parts:
        kind, sep, _ = n.partition(":")
        if sep and kind.isalpha() and kind not in KINDS and not Path(n).exists():
            raise UserError(f"--tasks {n}: unknown kind {kind!r}; use one of "
                            f"{', '.join(k + ':FILE' for k in KINDS)}, or a named task "
                            f"({', '.join(NAMED)})")
        if is_generation(n):
            task = load_generation(n, data)
            if task.name in seen:
                raise UserError(f"--tasks: {task.name} is named twice; give each task once "
                                "(two files of one kind need different file names)")
            seen.add(task.name)
            task.items = task.items[:limit]
            gen.append(task)
    return ",".join(n for n in parts if not is_generation(n)), gen


def load_generation(spec: str, data: str | Path = "data") -> GenTask:
    """One generation task from its `--tasks` name (see the module docstring)."""
    if spec in NAMED:
        *files, lang = NAMED[spec]
        path = next((Path(data) / f for f in files if (Path(data) / f).is_file()), None)
        if path is None:
            raise UserError(f"{Path(data) / files[0]}: no such file; put {spec}'s dev set there "
                            f"(SQuAD-style JSON) or pass --data DIR holding {files[0]}")
        return squad_task(spec, path, lang)
    kind, _, rest = spec.partition(":")
    if not rest:
        raise UserError(f"--tasks {spec}: no file; write {kind}:FILE")
    if kind == "squad":
        return squad_task(f"squad:{Path(rest).stem}", Path(rest))
    fields = None
    if kind == "translate":
        a, colon, b = rest.partition(":")
        if colon and "-" in a and not Path(rest).exists():
            fields, rest = tuple(a.split("-", 1)), b
    path = Path(rest)
    if not path.is_file():
        raise UserError(f"{path}: no such file (from --tasks {spec}); a {kind} task reads a JSONL "
                        "file, one JSON object a line")
    rows = list(iter_records(path))
    if not rows:
        raise UserError(f"{path}: no rows; a {kind} task needs at least one JSON object a line")
    name = f"{kind}:{path.stem}"
    if kind == "translate":
        return translate_task(name, path, rows, fields)
    if kind == "summarize":
        return summarize_task(name, path, rows)
    if kind == "classify":
        return classify_task(name, path, rows)
    return closedbook_task(name, path, rows)


def squad_task(name: str, path: Path, lang: str | None = None) -> GenTask:
    items = read_squad(path)
    lang = lang or language([it.context[:200] + it.question for it in items[:50]])
    prompt, cue = INSTRUCTIONS["squad"][lang], CUES["squad"][lang]
    return GenTask(name, "squad", path, lang, [
        GenItem(f"{path}#{it.id}", prompt.format(context=it.context.strip(), question=it.question.strip()),
                cue, it.answers) for it in items])


def text_field(obj: object, names: tuple[str, ...], where: str, layout: str) -> str:
    """The first of `names` in a JSONL row, a non-empty string (a number is taken as text)."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object {layout}, got {type(obj).__name__}")
    name = next((n for n in names if n in obj), None)
    if name is None:
        have = ", ".join(map(repr, list(obj)[:12])) or "none"
        also = f" (or {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""
        raise UserError(f"{where}: no {names[0]!r} field{also}; fields: {have}; expected {layout}")
    value = obj[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {name!r} is {type(value).__name__} {str(value)[:30]!r}, "
                        f"not a non-empty string; expected {layout}")
    return value


def translate_task(name: str, path: Path, rows: list, fields: tuple[str, str] | None) -> GenTask:
    sacrebleu_module()  # BLEU and chrF need it: say so before a model loads
    if fields:
        layout = f"{{{fields[0]!r}, {fields[1]!r}}} (from translate:{fields[0]}-{fields[1]}:FILE)"
        src_names, tgt_names = (fields[0],), (fields[1],)
    else:
        layout = '{"source", "target"} (or {"src", "ref"}, {"src", "tgt"})'
        src_names, tgt_names = ("source", "src"), ("target", "ref", "tgt")
    pairs = []
    for where, obj in rows:
        if fields and isinstance(obj, dict) and isinstance(obj.get("translation"), dict):
            obj = obj["translation"]  # Hugging Face's WMT layout
        pairs.append((where, text_field(obj, src_names, where, layout),
                      text_field(obj, tgt_names, where, layout)))
    src, lang = language([s for _, s, _ in pairs]), language([t for _, _, t in pairs])
    names = LANG_NAMES[lang]
    prompt = INSTRUCTIONS["translate"][lang]
    items = [GenItem(w, prompt.format(src=names[src], tgt=names[lang], text=s.strip()),
                     CUES["translate"][lang], [t]) for w, s, t in pairs]
    direction = "→".join(fields) if fields else "source→target"
    return GenTask(name, "translate", path, lang, items, direction=f"{direction} ({src}→{lang})")


def summarize_task(name: str, path: Path, rows: list) -> GenTask:
    layout = '{"text", "summary"}'
    pairs = [(w, text_field(o, ("text", "document", "article", "content"), w, layout),
              text_field(o, ("summary", "highlights", "abstract"), w, layout)) for w, o in rows]
    lang = language([t for _, t, _ in pairs])
    prompt = INSTRUCTIONS["summarize"][lang]
    return GenTask(name, "summarize", path, lang, [
        GenItem(w, prompt.format(text=t.strip()), CUES["summarize"][lang], [s]) for w, t, s in pairs])


def classify_task(name: str, path: Path, rows: list) -> GenTask:
    layout = '{"text", "label"}'
    pairs = [(w, text_field(o, ("text",), w, layout), text_field(o, ("label",), w, layout).strip())
             for w, o in rows]
    labels = list(dict.fromkeys(label for _, _, label in pairs))
    if len(labels) < 2:
        raise UserError(f"{path}: every row has the label {labels[0]!r}; a classify task needs "
                        "rows of at least two labels")
    lang = language([t for _, t, _ in pairs])
    listed = ("、" if lang != "en" else ", ").join(labels)
    prompt = INSTRUCTIONS["classify"][lang]
    return GenTask(name, "classify", path, lang, [
        GenItem(w, prompt.format(labels=listed, text=t.strip()), CUES["classify"][lang], [label])
        for w, t, label in pairs], labels=labels)


def closedbook_task(name: str, path: Path, rows: list) -> GenTask:
    layout = '{"question", "answers": [...]}'
    items = []
    for where, obj in rows:
        question = text_field(obj, ("question",), where, layout)
        answers = obj.get("answers", obj.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers or \
                not all(isinstance(a, str) and a.strip() for a in answers):
            raise UserError(f"{where}: 'answers' must be a non-empty list of non-empty strings "
                            f"(or 'answer' one string); expected {layout}")
        items.append((where, question, answers))
    lang = language([q for _, q, _ in items])
    prompt = INSTRUCTIONS["closedbook"][lang]
    return GenTask(name, "closedbook", path, lang, [
        GenItem(w, prompt.format(question=q.strip()), CUES["closedbook"][lang], a)
        for w, q, a in items])
