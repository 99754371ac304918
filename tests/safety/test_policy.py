"""The safety policy (jielong.safety.policy): the shipped default, "off", and one-line errors
naming the file and key for each kind of mistake."""

from __future__ import annotations

import pytest
import yaml

from jielong.errors import UserError
from jielong.safety.policy import ACTIONS, CATEGORIES, DEFAULT_POLICY, LANGUAGES, load_policy


def test_default_policy_covers_every_category_with_messages():
    p = load_policy("default")
    assert list(p.rules) == list(CATEGORIES) and p.enabled
    assert p.rules["self_harm"].action == "resources"
    assert p.rules["private_data"].action == "redact" and p.rules["injection"].action == "flag"
    assert {r.action for r in p.rules.values()} <= set(ACTIONS)
    for cat, rule in p.rules.items():
        if rule.action in ("refuse", "resources"):
            assert set(rule.messages) == set(LANGUAGES), cat
    assert "無法" in p.message("violence", "zh-hant") and "无法" in p.message("violence", "zh-hans")
    assert p.message("violence", "fr") == p.message("violence", "en")
    assert p.hit("violence", 0.6) and not p.hit("violence", 0.4)


def test_off_allows_everything():
    p = load_policy("off")
    assert not p.enabled and not any(p.hit(c, 1.0) for c in CATEGORIES)


def write(tmp_path, edit):
    data = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["categories"]["violence"].update(action="block"), r"categories\.violence\.action: 'block'"),
    (lambda d: d["categories"]["hate"].update(threshold=1.5), r"categories\.hate\.threshold: 1\.5"),
    (lambda d: d["categories"]["hate"].update(threshold="high"), r"categories\.hate\.threshold"),
    (lambda d: d["categories"].pop("minors"), r"categories\.minors: missing"),
    (lambda d: d["categories"].update(spam={"action": "flag"}), r"categories\.spam: unknown category"),
    (lambda d: d["categories"]["sexual"]["message"].pop("zh-hans"), r"sexual\.message\.zh-hans: missing"),
    (lambda d: d["categories"]["sexual"]["message"].update(fr="Non"), r"sexual\.message\.fr: unknown language"),
    (lambda d: d["categories"]["illegal"].update(treshold=0.5), r"illegal\.treshold: unknown key"),
    (lambda d: d.update(version=2), r"version: 2"),
])
def test_mistakes_name_file_and_key(tmp_path, edit, message):
    path = write(tmp_path, edit)
    with pytest.raises(UserError, match=message) as e:
        load_policy(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_edited_policy_and_bad_files(tmp_path):
    path = write(tmp_path, lambda d: d["categories"]["violence"].update(action="flag", threshold=0.9))
    p = load_policy(path)
    assert p.rules["violence"].action == "flag" and not p.hit("violence", 0.84)
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_policy(bad)
    with pytest.raises(UserError, match="not found"):
        load_policy(tmp_path / "none.yaml")
