"""Multiple-choice benchmarks read from local folders in their published layouts, and the
prompts lm-evaluation-harness writes for them.

Layouts (a task folder; the subject is the file name without its split suffix):
- CMMLU: `dev/*.csv`, `test/*.csv`, header `,Question,A,B,C,D,Answer` (an index first);
- C-Eval: `dev/`, `val/`, `test/` with `{subject}_dev.csv` …, header
  `id,question,A,B,C,D,answer,explanation` (its test split has no answers: val is scored);
- MMLU (hendrycks): header-less `dev/{subject}_dev.csv`, `test/{subject}_test.csv`, columns
  question,A,B,C,D,answer;
- TMMLU+: `{subject}_dev.csv`, `{subject}_test.csv` (or in `dev/`, `test/`), header
  `question,A,B,C,D,answer` (+ an optional `subject`); or the same as parquet files with those
  columns — `{subject}_test.parquet`, or the Hugging Face export's `{subject}/test/0000.parquet`.
A folder of your own in any of these layouts is a task too; its prompt is that of the layout
its header looks like. Which split is scored: C-Eval's val, else test, else val, else dev;
shots come from dev (else from the scored split, never the question itself).

Prompts, as lm-evaluation-harness (lm_eval/tasks, read for this file) writes them:
- description, once at the top: CMMLU `cmmlu_*.yaml` "以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n";
  C-Eval `ceval-valid_*.yaml` "以下是中国关于{科目}的单项选择题，请选出其中的正确答案。\\n\\n";
  MMLU `mmlu/default/mmlu_*.yaml` "The following are multiple choice questions (with
  answers) about {subject}.\\n\\n"; TMMLU+ `tmmluplus/default/*.yaml` "以下為{科目}的單選題，請提供正確答案的選項。\\n\\n";
- doc_to_text: "{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n" then "答案：" (CMMLU
  `_default_template_yaml`, C-Eval `_default_ceval_yaml`) or "Answer:" (MMLU
  `mmlu/default/_default_template_yaml`, TMMLU+ `_tmmluplus_template_yaml`);
- doc_to_choice ["A", "B", "C", "D"], joined with the default target_delimiter " ", so the
  continuations scored are " A" … " D"; a shot is its text, " ", its answer letter;
- shots: fewshot_config sampler first_n (the first k of the fewshot split), separated and
  followed by the default fewshot_delimiter "\\n\\n".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from jielong.errors import UserError, at
from jielong.eval.gentasks import KINDS, NAMED
from jielong.eval.subjects import SUBJECTS

KNOWN = ("cmmlu", "ceval", "mmlu", "tmmluplus")
SPLITS = ("dev", "val", "test")
LETTERS = "ABCDEFGHIJ"
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass
class Question:
    question: str
    choices: list[str]
    answer: int  # index into choices
    where: str  # file:line


@dataclass
class Subject:
    name: str
    questions: list[Question]  # the scored split
    shots: list[Question] = field(default_factory=list)  # the fewshot split (may be questions)
    categories: list[str] = field(default_factory=list)
    title: str = ""  # the subject as the prompt names it


@dataclass
class Task:
    name: str
    kind: str  # one of KNOWN: whose prompt and categories it uses
    path: Path
    subjects: list[Subject]


# ----------------------------------------------------------------------------- prompts

def description(kind: str, title: str) -> str:
    if kind == "cmmlu":
        return f"以下是关于{title}的单项选择题，请直接给出正确答案的选项。\n\n"
    if kind == "ceval":
        return f"以下是中国关于{title}的单项选择题，请选出其中的正确答案。\n\n"
    if kind == "tmmluplus":
        return f"以下為{title}的單選題，請提供正確答案的選項。\n\n"
    return f"The following are multiple choice questions (with answers) about {title}.\n\n"


def doc_to_text(kind: str, q: Question) -> str:
    options = "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(q.choices))
    return f"{q.question.strip()}\n{options}" + ("答案：" if kind in ("cmmlu", "ceval") else "Answer:")


def continuations(q: Question) -> list[str]:
    """What is scored after the context: the target delimiter and each choice's letter."""
    return [TARGET_DELIMITER + LETTERS[i] for i in range(len(q.choices))]


def pick_shots(subject: Subject, q: Question, k: int) -> list[Question]:
    """lm-eval's first_n sampler: the first k of the fewshot split; when that is the scored
    split itself, the question is left out of its own shots."""
    pool = subject.shots[:k + 1]
    return [s for s in pool if s is not q][:k]


def context(kind: str, subject: Subject, q: Question, k: int) -> str:
    """The whole prompt before the answer: description, k solved examples, the question."""
    shots = "".join(doc_to_text(kind, s) + TARGET_DELIMITER + LETTERS[s.answer] + FEWSHOT_DELIMITER
                    for s in pick_shots(subject, q, k))
    return description(kind, subject.title) + shots + doc_to_text(kind, q)


# ----------------------------------------------------------------------------- reading

def _kind_of_header(header: list[str] | None) -> str:
    """Which published layout a CSV header looks like (None: header-less, MMLU)."""
    if header is None:
        return "mmlu"
    if "explanation" in header or header[:1] == ["id"]:
        return "ceval"
    if header[:1] == [""]:  # CMMLU's unnamed index column
        return "cmmlu"
    return "tmmluplus"


def _layout(path: Path) -> str:
    """The kind of layout a CSV's first line (a parquet file's columns) says it is."""
    if path.suffix == ".parquet":
        return _kind_of_header([c.strip().lower() for c in _parquet(path).schema_arrow.names])
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        first = [c.strip().lower() for c in next(csv.reader(f), [])]
    header = first if "question" in first or "answer" in first else None
    return _kind_of_header(header)


def read_csv(path: Path) -> tuple[list[Question], str]:
    """(questions, the layout's kind) of one benchmark CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines)
    rows: list[tuple[int, list[str]]] = []
    line = 1
    for row in reader:
        rows.append((line, row))
        line = reader.line_num + 1
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]
    if not rows:
        return [], "tmmluplus"
    first = [c.strip().lower() for c in rows[0][1]]
    if "question" in first or "answer" in first:
        return _questions(path, first, rows[1:], lambda n: at(path, n), rows[0][0])
    if len(first) != 6:
        raise UserError(f"{at(path, rows[0][0])}: {len(first)} columns and no header; a benchmark "
                        "CSV needs a header with question,A,B,C,D,answer (or six columns "
                        "question,A,B,C,D,answer without one, as MMLU's)")
    return _questions(path, None, rows, lambda n: at(path, n))


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading .parquet needs pyarrow; "
                        "install it with `pip install 'jielong[data]'`") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({e}); check the file or "
                        "re-export it") from None


def read_parquet(path: Path) -> tuple[list[Question], str]:
    """(questions, kind) of a benchmark as parquet (TMMLU+'s columns question, A-D, answer,
    as the Hugging Face parquet export of ikala/tmmluplus has them); rows are numbered from 1."""
    table = _parquet(path).read()
    header = [c.strip().lower() for c in table.column_names]
    columns = table.to_pydict()
    rows = [(i + 1, ["" if v is None else str(v) for v in values])
            for i, values in enumerate(zip(*columns.values(), strict=True))]
    return _questions(path, header, rows, lambda n: f"{path}: row {n}", None)


def read_questions(path: Path) -> tuple[list[Question], str]:
    return read_parquet(path) if path.suffix == ".parquet" else read_csv(path)


def _questions(path: Path, header: list[str] | None, body: list[tuple[int, list[str]]], where,
               header_line: int | None = None) -> tuple[list[Question], str]:
    """Questions from rows under a header (None: MMLU's six header-less columns); `where(n)`
    names row n in errors."""
    if header is not None:
        need = ["question", "a", "b", "c", "d", "answer"]
        missing = [c for c in need if c not in header]
        if missing:
            head = at(path, header_line) if header_line else str(path)
            raise UserError(f"{head}: no {', '.join(missing)} column (header: {','.join(header)}); "
                            "a benchmark needs the columns question,A,B,C,D,answer")
        n_choices = next(i for i, letter in enumerate(LETTERS.lower()) if letter not in header)
        cols = [header.index(c) for c in ["question", *LETTERS.lower()[:n_choices], "answer"]]
    else:
        n_choices, cols = 4, list(range(6))
    questions = []
    for n, row in body:
        if len(row) <= max(cols):
            raise UserError(f"{where(n)}: {len(row)} fields, expected {max(cols) + 1} "
                            "(a quote left open, or a missing field?)")
        fields = [row[i] for i in cols]
        answer = fields[-1].strip().upper()
        letters = LETTERS[:n_choices]
        if len(answer) != 1 or answer not in letters:
            raise UserError(f"{where(n)}: answer {fields[-1]!r} is not one of the choices "
                            f"{', '.join(letters)}")
        questions.append(Question(fields[0], fields[1:-1], letters.index(answer), where(n)))
    return questions, _kind_of_header(header)


FORMATS = ("*.csv", "*.parquet")


def _split_files(folder: Path) -> dict[str, dict[str, Path]]:
    """{split: {subject: file}} from `split/*.csv` folders or `{subject}_{split}.csv` names (or
    .parquet), or the Hugging Face parquet export's `{subject}/{split}/0000.parquet`; files
    with no split in their name are one split, "test"."""
    found: dict[str, dict[str, Path]] = {}
    for split in SPLITS:
        if (folder / split).is_dir():
            for f in sorted(f for pattern in FORMATS for f in (folder / split).glob(pattern)):
                subject = f.stem.removesuffix(f"_{split}")
                found.setdefault(split, {})[subject] = f
    for f in sorted(f for pattern in FORMATS for f in folder.glob(pattern)):
        split = next((s for s in SPLITS if f.stem.endswith(f"_{s}")), "test")
        found.setdefault(split, {}).setdefault(f.stem.removesuffix(f"_{split}"), f)
    for f in sorted(folder.glob("*/*/*.parquet")):  # {subject}/{split}/0000.parquet
        subject, split = f.parent.parent.name, f.parent.name
        if split in SPLITS and subject not in SPLITS:
            found.setdefault(split, {}).setdefault(subject, f)
    return found


def load_task(name: str, data: str | Path = "data") -> Task:
    """A known benchmark (`cmmlu`, … read from DATA/NAME) or a folder of your own."""
    if name in KNOWN:
        folder, kind = Path(data) / name, name
        if not folder.is_dir():
            raise UserError(f"{folder}: no such folder; put {name} there in its published layout "
                            "(or pass --data DIR holding a {name}/ folder)")
    else:
        folder, kind = Path(name), None
        if not folder.is_dir():
            raise UserError(f"unknown task {name!r}: not one of {', '.join(KNOWN + tuple(NAMED))}, "
                            f"not a folder, and not {', '.join(k + ':FILE' for k in KINDS)}")
    files = _split_files(folder)
    if not files:
        raise UserError(f"{folder}: no benchmark CSVs (expected dev/ and test/ folders of CSVs, or "
                        "{subject}_dev.csv and {subject}_test.csv files; or .parquet)")
    kind = kind or _layout(next(iter(next(iter(files.values())).values())))
    order = ("val", "test", "dev") if kind == "ceval" else ("test", "val", "dev")
    scored = next(s for s in order if s in files)
    subjects = []
    for subject, path in files[scored].items():
        questions, _ = read_questions(path)
        if not questions:
            raise UserError(f"{path}: no questions; remove the file or fill it")
        shot_path = files.get("dev", {}).get(subject)
        shots = read_questions(shot_path)[0] if shot_path and scored != "dev" else questions
        title, categories = SUBJECTS.get(kind, {}).get(subject, (subject.replace("_", " "), []))
        subjects.append(Subject(subject, questions, shots, categories or ["other"], title))
    return Task(name if name in KNOWN else folder.name, kind, folder, subjects)


def tasks_from(names: str, data: str | Path = "data") -> list[Task]:
    """Tasks from a comma-separated list, each checked (every file read) before any scoring."""
    parts = [n.strip() for n in names.split(",") if n.strip()]
    if not parts:
        raise UserError(f"--tasks {names!r}: name at least one of {', '.join(KNOWN)} or a folder")
    return [load_task(n, data) for n in parts]
