"""Helpers of the constrained-decoding tests (tests/infer/test_constrain.py,
tests/serve/test_structured_output.py): a hand-written check of the JSON-schema keywords they
use, and a random model nudged to close what it opens."""

import torch

from jielong.checkpoint import load_model


def valid(x, s) -> bool:
    """The JSON-schema keywords the tests use, checked by hand (no validator dependency)."""
    if "anyOf" in s:
        return any(valid(x, a) for a in s["anyOf"])
    if "const" in s and x != s["const"] or "enum" in s and x not in s["enum"]:
        return False
    t = s.get("type")
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if t == "integer":
        return type(x) is int and s.get("minimum", x) <= x <= s.get("maximum", x)
    if t in kinds and not isinstance(x, kinds[t]):
        return False
    if t == "string":
        return len(x) <= s.get("maxLength", len(x))
    if t == "array":
        return len(x) <= s.get("maxItems", len(x)) and all(valid(v, s.get("items", {})) for v in x)
    if t == "object":
        props = s.get("properties", {})
        return (all(k in x for k in s.get("required", []))
                and (s.get("additionalProperties", True) is not False or set(x) <= set(props))
                and all(valid(v, props[k]) for k, v in x.items() if k in props))
    return True


def nudged(model_dir, tok):
    """The random model in `model_dir` with an output bias toward the tokens that close a
    JSON string, object or array, so that any-JSON replies end within max_tokens; the mask
    alone decides what is valid."""
    m = load_model(model_dir).eval()
    head = torch.nn.Linear(m.lm_head.in_features, m.lm_head.out_features, bias=True)
    head.weight = m.lm_head.weight
    with torch.no_grad():
        head.bias.zero_()
        for i, b in enumerate(tok.byte_table):
            if b and set(b) & set(b'"}]'):
                head.bias[i] = 4.0
    m.lm_head = head
    return m
