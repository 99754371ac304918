"""The corpus pipeline (`jielong data clean | stats | quality-train`): raw text to training text
on datatrove — extraction, normalisation, language and script, quality and repetition rules,
harmful-content lexicon, PII and secrets, exact and near-duplicate removal, a quality
classifier, and a report of what was kept and dropped and why.

The modules, in the order a document meets them:
  commands        the CLI functions: clean, stats_cmd, quality_train
  config          CleanConfig, ClusterConfig, the checks of their options, the run's fingerprint
  pipeline        builds both stages and runs them on an executor (console: a quiet one)
  cluster         the same stages on Ray or Slurm (ClusterConfig in config), a Slurm dry run
  readers         input files → documents (txt, jsonl, parquet, html, warc)
  html_extract    HtmlExtract: a web page's main text
  normalize       Normalize: mojibake, NFC, control characters, spaces
  language        LanguageScript: zh/en/other, Traditional/Simplified, OpenCC conversion
  quality_rules   QualityFilter: Gopher/C4/FineWeb rules (numbers in thresholds, words in words)
  repetition      RepetitionFilter: Gopher's repetition rules
  harmful         HarmfulFilter: lexicon/*.txt and an optional classifier
  redact          PiiRedact and DropWriter: personal data out of all output (finding it: pii)
  quality_score   QualityScore: the quality model (quality_model) as a step
  tally           Tally after every step, and the per-step table of stats.json
  finish          stage 2: dedup, up-sampling, shards, tokens, stats, report
  dedup           exact and MinHash near-duplicate detection (hashing: shared 64-bit hashes)
  report          the per-step table, report.md and charts
"""
