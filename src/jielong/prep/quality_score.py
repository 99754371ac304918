"""The quality-model step: `QualityScore` scores each document with a model trained by
`jielong data quality-train` (`jielong.prep.quality_model`), records the score in
metadata["quality"] for up-sampling, and drops documents under `min_quality`.

    QualityScore("quality.json", min_quality=0.3)   # a step of the stage-1 pipeline
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from jielong.prep.quality_model import QualityModel


class QualityScore(BaseFilter):
    """Scores each document with a `jielong.prep.quality_model` model (metadata["quality"]) and
    drops those under `min_quality` ("low_quality")."""

    name = "🏅 Quality classifier"

    def __init__(self, model_path: str, min_quality: float = 0.0):
        super().__init__()
        self.model_path, self.min_quality = model_path, min_quality
        self._model = None

    def filter(self, doc: Document):
        if self._model is None:  # loaded in the worker, not pickled to it
            self._model = QualityModel.load(self.model_path)
        lang = doc.metadata.get("lang")
        score = self._model.score(doc.text, lang if lang in ("zh", "en") else None)
        doc.metadata["quality"] = round(score, 4)
        return score >= self.min_quality or (False, "low_quality")
