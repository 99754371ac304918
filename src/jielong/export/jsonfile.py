"""The JSON files of a model folder (config.json, tokenizer.json, …), read with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from jielong.errors import UserError, at, json_problem


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{at(path, e.lineno)}: not valid JSON ({json_problem(e)}); fix or re-save the file") \
            from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8; re-save the file as UTF-8") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object ({{...}}) at the top level")
    return data


def optional_json(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}
