"""The safety policy: for each category, an action and the score threshold that triggers it.

    from jielong.safety.policy import load_policy
    policy = load_policy("default")        # default_policy.yaml, shipped with jielong
    policy = load_policy("my_policy.yaml") # your copy of it, edited
    policy = load_policy("off")            # every category allowed, rails skip work
    policy.rules["self_harm"].action       # "resources"
    policy.message("violence", "zh-hant")  # the refusal shown to a 繁體 user

The categories follow the ones the open guard models share (Llama Guard 3's hazard taxonomy
and OpenAI's moderation categories, narrowed to eight): self_harm, violence, sexual, minors,
hate, illegal, private_data, injection. The actions are the ones a deployment needs: allow;
refuse with a message per language (en, zh-hant, zh-hans); answer with crisis resources;
redact the matched spans; flag only (count and record, let it through). A category counts as
hit when its score, the maximum over the detectors, reaches its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jielong.errors import UserError
from jielong.files import read_yaml

CATEGORIES = ("self_harm", "violence", "sexual", "minors", "hate", "illegal", "private_data",
              "injection")
ACTIONS = ("allow", "refuse", "resources", "redact", "flag")
LANGUAGES = ("en", "zh-hant", "zh-hans")
DEFAULT_POLICY = Path(__file__).parent / "default_policy.yaml"
RULE_KEYS = ("action", "threshold", "message")


@dataclass(frozen=True)
class Rule:
    """What to do about one category: `action` when its score reaches `threshold`."""

    action: str
    threshold: float = 0.5
    messages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A rule per category; `source` names where it came from ("off", a file)."""

    rules: dict[str, Rule]
    source: str = "default"

    @property
    def enabled(self) -> bool:
        """Whether any category does anything but allow."""
        return any(r.action != "allow" for r in self.rules.values())

    def hit(self, category: str, score: float) -> bool:
        """Whether `score` triggers the category (never for an allowed one)."""
        rule = self.rules[category]
        return rule.action != "allow" and score >= rule.threshold

    def message(self, category: str, language: str = "en") -> str:
        """The category's message in `language` (en, zh-hant, zh-hans), English otherwise."""
        msgs = self.rules[category].messages
        return msgs.get(language) or msgs.get("en", "")


def off_policy() -> Policy:
    return Policy({c: Rule("allow") for c in CATEGORIES}, source="off")


def load_policy(spec: str | Path = "default") -> Policy:
    """The policy named by `spec`: "default" (default_policy.yaml), "off", or a YAML file.
    Every field is checked; a mistake raises a one-line UserError naming file and key."""
    if str(spec) == "off":
        return off_policy()
    path = DEFAULT_POLICY if str(spec) == "default" else Path(spec)
    data = read_yaml(path, "safety policy not found; pass a YAML file, 'default' or 'off'")
    return parse_policy(data, str(path))


def parse_policy(data: object, where: str) -> Policy:
    """A `Policy` from the parsed YAML `data` ({"version": 1, "categories": {...}})."""
    if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
        raise UserError(f"{where}: a safety policy is a mapping with a 'categories' mapping "
                        "(see jielong/safety/default_policy.yaml)")
    extra = set(data) - {"version", "categories"}
    if extra:
        raise UserError(f"{where}: unknown key {sorted(extra)[0]!r}; the keys are version, categories")
    if data.get("version", 1) != 1:
        raise UserError(f"{where}: version: {data['version']!r} is not supported (use 1)")
    cats = data["categories"]
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise UserError(f"{where}: categories.{unknown[0]}: unknown category; the categories are "
                        f"{', '.join(CATEGORIES)}")
    missing = [c for c in CATEGORIES if c not in cats]
    if missing:
        raise UserError(f"{where}: categories.{missing[0]}: missing; list every category "
                        "(action: allow turns one off)")
    return Policy({c: parse_rule(cats[c], f"{where}: categories.{c}") for c in CATEGORIES},
                  source=where)


def parse_rule(raw: object, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping with action, threshold, message")
    extra = [k for k in raw if k not in RULE_KEYS]
    if extra:
        raise UserError(f"{where}.{extra[0]}: unknown key; the keys are {', '.join(RULE_KEYS)}")
    action = raw.get("action")
    if action not in ACTIONS:
        raise UserError(f"{where}.action: {action!r} is not one of {', '.join(ACTIONS)}")
    threshold = raw.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise UserError(f"{where}.threshold: {threshold!r} must be a number in (0, 1]")
    messages = raw.get("message") or {}
    if not isinstance(messages, dict):
        raise UserError(f"{where}.message: expected a mapping of {', '.join(LANGUAGES)} to text")
    for lang, text in messages.items():
        if lang not in LANGUAGES:
            raise UserError(f"{where}.message.{lang}: unknown language; use {', '.join(LANGUAGES)}")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}.message.{lang}: must be non-empty text")
    if action in ("refuse", "resources"):
        absent = [lang for lang in LANGUAGES if lang not in messages]
        if absent:
            raise UserError(f"{where}.message.{absent[0]}: missing; action {action} needs a "
                            f"message in each of {', '.join(LANGUAGES)}")
    return Rule(action, float(threshold), dict(messages))
