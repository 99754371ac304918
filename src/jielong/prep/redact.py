"""Personal data and secrets out of what the pipeline writes: `PiiRedact`, the step that
redacts every kept document, and `DropWriter`, which writes each filter's dropped
documents aside, redacted too (the filters run before the PII step).

    from jielong.prep.redact import redact_document
    redact_document(doc)   # doc.text "mail me at a@b.com" -> "mail me at <EMAIL>"; {"email": 1}

What counts as personal data and how it is found is `jielong.prep.pii`'s.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.jsonl import JsonlWriter

from jielong.errors import UserError
from jielong.prep import pii
from jielong.prep.readers import POS


def redact_document(doc: Document, kinds: Sequence[str] | None = None) -> dict[str, int]:
    """Redacts `doc` in place: its text, and its id and metadata (a JSONL record's other
    fields, a WARC record's URL) where they hold any; returns {kind: count} of the text's."""
    doc.text, counts = pii.redact(doc.text, kinds)
    if doc.id and isinstance(doc.id, str):
        doc.id = pii.redact(doc.id, kinds)[0]
    elsewhere = Counter()
    doc.metadata = pii.redact_all(doc.metadata, kinds, elsewhere)
    if elsewhere:
        doc.metadata["pii_metadata"] = dict(elsewhere)
    return counts


class PiiRedact(PipelineStep):
    """Replaces personal data and credentials with typed placeholders (`jielong.prep.pii`):
    <EMAIL>, <PHONE>, <TW_ID>, <CN_ID>, <CREDIT_CARD>, <IP>, <PRIVATE_KEY>, <HF_TOKEN>,
    <OPENAI_KEY>, <ANTHROPIC_KEY>, <AWS_KEY_ID>, <AWS_SECRET>, <GITHUB_TOKEN>. Counts each
    kind in metadata["pii"] (only on documents with any) and in the stats ("pii_<kind>").
    The id and metadata are redacted too (`redact_document`; their finds are counted in
    metadata["pii_metadata"]). `jielong data clean` also redacts every document a filter
    drops before writing it aside, since most filters run before this step.

    kinds: which kinds to redact (default: all, `pii.KINDS`).
    """

    name = "🕵️ PII redact"
    type = "✂️ - FORMAT"

    def __init__(self, kinds: list[str] | None = None):
        super().__init__()
        if kinds is not None:
            unknown = sorted(set(kinds) - set(pii.KINDS))
            if unknown:
                raise UserError(f"kinds {unknown}: unknown; known: {', '.join(pii.KINDS)}")
        self.kinds = None if kinds is None else tuple(kinds)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            self.stat_update("total")
            with self.track_time():
                counts = redact_document(doc, self.kinds)
            if counts:
                doc.metadata["pii"] = counts
                for kind, n in counts.items():
                    self.stat_update(f"pii_{kind}", value=n)
            yield doc


class DropWriter(JsonlWriter):
    """The exclusion writer of one filter: WORK/<label>/<reason>/<rank>.jsonl.

    redact: redact personal data and secrets (`jielong.prep.pii`) in what it writes: the
        text, id and metadata. The filters run before the PII step, so without it a token
        that the kept output shows as <HF_TOKEN> would sit raw in dropped/too_short.jsonl.
    """

    def __init__(self, folder: str, label: str, redact: bool = True):
        super().__init__(folder, output_filename=label + "/${filter_reason}/${rank}.jsonl",
                         compression=None)
        self.label, self.redact = label, redact

    def write(self, document, rank: int = 0, **kwargs):
        for key in (POS, "read_reason"):  # internal bookkeeping, not for people
            document.metadata.pop(key, None)
        if self.redact:
            document.text, _ = pii.redact(document.text)
            if isinstance(document.id, str):
                document.id = pii.redact(document.id)[0]
            document.metadata = pii.redact_all(document.metadata)
        super().write(document, rank, **kwargs)

    def _get_output_filename(self, document, rank=0, **kwargs):
        reason = document.metadata.get("filter_reason") or self.label
        document.metadata["filter_reason"] = re.sub(r"[^\w.-]+", "_", str(reason))
        document.metadata["dropped_by"] = self.label
        return super()._get_output_filename(document, rank, **kwargs)

