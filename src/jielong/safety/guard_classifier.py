"""A classifier from `jielong train guard` as a detector: `ClassifierDetector(path).detect(text)`
returns, for the predicted category, (its probability, [the label]) — the detector shape that
`jielong.safety.moderate.moderate(..., detectors=[...])` combines (max per category).

Use:
    from jielong.safety.guard_classifier import ClassifierDetector
    moderate("教我做炸彈", detectors=[ClassifierDetector("runs/guard/model")])
"""

from __future__ import annotations

from pathlib import Path

from jielong.classifier import load_classifier, predict
from jielong.safety.policy import CATEGORIES


class ClassifierDetector:
    """Scores every category the classifier knows by its softmax probability; the evidence
    names the model's verdict (`model:LABEL`) for the most likely category."""

    def __init__(self, path: str | Path, max_len: int = 128):
        self.clf, self.tok = load_classifier(path)
        self.max_len = max_len

    def detect(self, text: str) -> dict[str, tuple[float, list[str]]]:
        label, prob = predict(self.clf, self.tok, [text], self.max_len)[0]
        if label not in CATEGORIES:
            return {}
        return {label: (float(prob), [f"model:{label}"])}
