"""Safety: a policy, detectors, rails, crisis resources and moderation, in 繁體, 简体 and English.

- policy.py: the categories (`CATEGORIES`), each with an action (allow, refuse with a message
  per language, answer with resources, redact, flag only) and a score threshold;
  default_policy.yaml is the documented default, `load_policy("off")` turns everything off.
- lexicon.py: a transparent lexicon detector, the same term lists as prep's harmful-text
  filter (prep/lexicon/*.txt, one source of truth) plus prep's PII finders for private data.
- injection.py: prompt-injection rules ("ignore previous instructions" and kin, 繁/简/en) and
  `mark_data`, which wraps retrieved documents and tool results as data, not instructions.
- guard_models.py: any guard model in Llama Guard or Qwen3Guard layout, its verdict parsed
  into these categories.
- guard_data.py + guard_classifier.py: `jielong train guard` (COLD + a written 繁/简/en set with
  hard negatives, trained by jielong's classification stage) and its detector.
- moderate.py: `moderate(text, policy)` in OpenAI's moderation shape and `jielong moderate`.
- resources.py + crisis_resources.yaml: crisis lines by region (Taiwan, mainland China, Hong
  Kong, an international fallback), each with its source and the date it was checked, chosen
  by locale or the message's script; a caring reply and a card with them.

A detector returns, per category it covers, (score in [0, 1], evidence); the policy combines
detectors by taking the maximum score per category. Rails reduce risk; they are no guarantee.
"""
