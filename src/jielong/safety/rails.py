"""Rails: the policy applied to a conversation, before generation (the input rail) and to the
reply as it streams (the output rail), with the decisions a server counts and stores.

    from jielong.safety.rails import Rails
    rails = Rails(load_policy("default"), locale="zh-TW")
    v = rails.check("我不想活了")                    # the input rail
    v.blocked.action, v.blocked.reply              # "resources", a caring reply with 1925 ...
    stream = rails.stream(about="怎麼做炸彈？")      # the output rail for one reply
    for delta in deltas:
        text, v = stream.feed(delta)               # text: safe to show now
        if v is not None and v.blocked:            # stop generating, show v.blocked.reply,
            break                                  # finish_reason "content_filter"
    text, v = stream.finish()                      # the held-back tail, checked

What each action does on each rail:
- refuse: the input is not generated from; the user gets the category's message in their
  language. On the output rail the stream stops there and the message follows what was shown.
- resources (self-harm by default): as refuse, but the reply is the caring one with crisis
  lines for the user's region (jielong.safety.resources: by `locale`, else the script of the
  user's message), and the decision carries the card the web chat draws.
- redact: the matched spans are replaced (private data: prep's placeholders, <PHONE> ...;
  another category: its terms by "***"); the input goes on redacted, the output streams
  redacted.
- flag: nothing changes for the user; the decision is counted and stored for review.

When several categories are hit, one blocking decision wins, in this order: minors,
self_harm (a person at risk gets resources even if their words also read as violence), then
the highest score. The language of a reply is the user's (`about`: the message the reply
answers), not the model's.

The output rail checks the text as it grows: once at least CHECK_EVERY new characters have
come, it runs the fast detectors on them plus the OVERLAP characters before (so a term split
across two checks is still read whole, and a check costs the same at token 10 and token
1000), and it holds back the last HOLDBACK characters, so a phone number or a term split
across tokens is redacted or stopped before any of it is shown. A term longer than HOLDBACK
characters, or a category whose threshold needs several terms further apart than OVERLAP,
can slip through a stream. A stream's `every` may change between feeds (the server checks in
larger steps under load: jielong.serve.safety_rails.check_every); the holdback holds whatever
the step. Model detectors (a guard model, a trained classifier) are slow; they run on the
input rail and on the finished reply (`finish`), not per token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from jielong.errors import UserError
from jielong.prep.pii import redact as redact_pii
from jielong.safety.moderate import default_detectors, model_detectors, moderate
from jielong.safety.policy import Policy, load_policy
from jielong.safety.resources import crisis_reply, language_for, region_for, resources_card

RAILS = ("input", "output")
BLOCKING = ("refuse", "resources")
FIRST = ("minors", "self_harm")  # blocking categories that win over a higher score
CHECK_EVERY = 8  # new characters of a growing reply that make the next streaming check
OVERLAP = 64     # characters already checked that a check reads again (> the longest term)
HOLDBACK = 24    # characters of a growing reply not shown until a later check clears them
MASK = "***"


@dataclass
class Decision:
    """One category hit on one rail: what was done about it and why."""

    rail: str
    category: str
    action: str
    score: float
    evidence: list[str] = field(default_factory=list)
    reply: str | None = None  # what the user sees instead (refuse, resources)
    card: dict | None = None  # the crisis resources card (resources)

    def to_dict(self) -> dict:
        return {"rail": self.rail, "category": self.category, "action": self.action,
                "score": round(self.score, 4), "evidence": self.evidence, "reply": self.reply,
                "card": self.card}


@dataclass
class Verdict:
    """A rail's result for one text: every decision, and the text as it may go on."""

    decisions: list[Decision]
    text: str

    @property
    def blocked(self) -> Decision | None:
        """The decision that stops this text (refuse or resources), if any."""
        return next((d for d in self.decisions if d.action in BLOCKING), None)


class Rails:
    """The policy's rails with `detectors` (default: the lexicon and the injection rules) and
    `model_detectors` (guard models, trained classifiers: input rail and finished replies
    only). `locale` (BCP 47, e.g. zh-TW, zh-HK, en-US) picks the crisis lines' region."""

    def __init__(self, policy: Policy, detectors=None, model_detectors=(),
                 locale: str | None = None, resources: dict | None = None):
        self.policy = policy
        self.detectors = tuple(default_detectors() if detectors is None else detectors)
        self.model_detectors = tuple(model_detectors)
        self.locale, self.resources = locale, resources

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def check(self, text: str, rail: str = "input", about: str | None = None,
              models: bool = True) -> Verdict:
        """The decisions for `text` on `rail`; `about` is the user's message a reply answers
        (its language picks the messages; default `text`). `models`: also run the model
        detectors."""
        if not self.enabled or not text:
            return Verdict([], text)
        dets = self.detectors + (self.model_detectors if models else ())
        result = moderate(text, self.policy, dets)
        about = text if about is None else about
        hits = [c for c, hit in result["categories"].items() if hit]
        scores, evidence = result["category_scores"], result["evidence"]
        hits.sort(key=lambda c: (c not in FIRST, FIRST.index(c) if c in FIRST else 0, -scores[c]))
        decisions, out = [], text
        for cat in hits:
            action = self.policy.rules[cat].action
            d = Decision(rail, cat, action, scores[cat], list(evidence.get(cat, [])))
            if action == "resources":
                d.reply = self.resources_message(cat, about)
                d.card = resources_card(about, self.locale, self.resources)
            elif action == "refuse":
                d.reply = self.policy.message(cat, language_for(about, region_for(about, self.locale)))
            elif action == "redact":
                out = redact_text(out, cat, d.evidence)
            decisions.append(d)
        decisions.sort(key=lambda d: d.action not in BLOCKING)  # the winner first, order kept
        return Verdict(decisions, out)

    def resources_message(self, category: str, about: str) -> str:
        """The caring reply with crisis lines (jielong.safety.resources), opened by the
        policy's message for the category in the user's language."""
        lang = language_for(about, region_for(about, self.locale))
        return crisis_reply(about, self.locale, self.resources,
                            opening=self.policy.message(category, lang))

    def stream(self, about: str = "") -> StreamRail:
        """The output rail for one reply to the user's message `about`."""
        return StreamRail(self, about)


LOCALE = re.compile(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*")


def build_rails(safety: str = "default", locale: str | None = None,
                guard_model: str | None = None, guard_classifier: str | None = None,
                device: str = "cpu") -> Rails:
    """The rails `jielong serve` runs: the policy `safety` (a YAML file, "default", "off"),
    the crisis lines' `locale`, and the model detectors: a guard model directory (Llama Guard
    or Qwen3Guard layout) and/or a classifier from `jielong train guard`."""
    policy = load_policy(safety)
    if locale is not None and not LOCALE.fullmatch(locale):
        raise UserError(f"--locale {locale!r}: not a locale; give a BCP 47 tag such as zh-TW, "
                        "zh-HK, zh-CN or en-US")
    models = model_detectors(guard_model, guard_classifier, device)
    return Rails(policy, model_detectors=models, locale=locale)


def redact_text(text: str, category: str, evidence: list[str]) -> str:
    """`text` with the category's spans replaced: PII by prep's placeholders, terms by ***
    (each evidence term, either script, case folded)."""
    if category == "private_data":
        return redact_pii(text)[0]
    for term in sorted(evidence, key=len, reverse=True):
        text = re.sub(re.escape(term), MASK, text, flags=re.I)
    return text


class StreamRail:
    """The output rail over one growing reply: `feed(delta)` -> (text safe to show now, the
    verdict of this check or None); after a blocking verdict, nothing more is shown.
    `finish()` shows the held-back tail (checked) and checks the whole reply for the record.
    `decisions` collects every decision of the reply, each category once."""

    def __init__(self, rails: Rails, about: str, every: int = CHECK_EVERY,
                 overlap: int = OVERLAP, holdback: int = HOLDBACK):
        self.rails, self.about = rails, about
        self.every, self.overlap, self.holdback = every, overlap, holdback
        self.raw = ""       # the reply as generated
        self.shown = ""     # what the user has been shown (redacted)
        self.checked = 0    # characters of raw the checks have read
        self.stopped: Decision | None = None
        self.decisions: list[Decision] = []

    def _note(self, v: Verdict) -> None:
        seen = {(d.category, d.action) for d in self.decisions}
        self.decisions += [d for d in v.decisions if (d.category, d.action) not in seen]

    def _start(self) -> int:
        """Where the next check starts: OVERLAP characters before the unchecked text, moved
        back to the start of an ASCII word (so "overkill" is not read as "kill")."""
        start = max(0, self.checked - self.overlap)
        floor = max(0, start - 32)
        while start > floor and self.raw[start - 1].isascii() and self.raw[start - 1].isalnum():
            start -= 1
        return start

    def _check(self, final: bool) -> tuple[str, Verdict | None]:
        if not self.rails.enabled:
            out, self.shown = self.raw[len(self.shown):], self.raw
            return out, None
        v = self.rails.check(self.raw[self._start():], "output", self.about, models=False)
        self.checked = len(self.raw)
        if v.decisions:
            self._note(v)
        if v.blocked:
            self.stopped = v.blocked
            return "", v
        # What may be shown: the whole reply redacted, less the held-back tail.
        redacted = self.redacted()
        end = len(redacted) if final else max(len(self.shown), len(redacted) - self.holdback)
        out = redacted[len(self.shown):end]  # (a span longer than the holdback may differ)
        self.shown += out
        return out, v if v.decisions else None

    def redacted(self) -> str:
        """The reply so far with every redaction decided for it applied."""
        text = self.raw
        for d in self.decisions:
            if d.action == "redact":
                text = redact_text(text, d.category, d.evidence)
        return text

    def feed(self, delta: str) -> tuple[str, Verdict | None]:
        if self.stopped or not delta:
            return "", None
        self.raw += delta
        if len(self.raw) - self.checked < self.every:
            return "", None
        return self._check(final=False)

    def finish(self) -> tuple[str, Verdict | None]:
        """The tail held back, after a last check; then the whole reply once with the model
        detectors (their decisions are recorded, the reply is already shown)."""
        if self.stopped:
            return "", None
        out, v = self._check(final=True)
        if self.stopped:
            return "", v
        if self.rails.model_detectors and self.raw:
            whole = self.rails.check(self.raw, "output", self.about)
            self._note(whole)
        return out, v
