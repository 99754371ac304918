"""Evaluation: multiple-choice benchmarks from local files scored as lm-evaluation-harness
scores them (`jielong eval`), perplexity and bits per byte on held-out text, runs compared with
bootstrap intervals (`jielong eval compare`), two models' answers judged pairwise by a judge
model in both orders (`jielong eval judge`), the web chat's arena votes as Bradley-Terry
ratings (`jielong eval arena`), QA and generation metrics (CMRC's EM/F1, ROUGE-L, BLEU,
chrF), classification metrics, reward-model scores, and the demo's checks."""
