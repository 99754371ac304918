"""The corpus pipeline (`jielong data clean | stats | quality`): raw text to training text on
datatrove — extraction, normalisation, language and script, quality and repetition rules,
harmful-content lexicon, PII and secrets, exact and near-duplicate removal, a quality
classifier, and a report of what was kept and dropped and why."""
