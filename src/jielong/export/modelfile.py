"""The Ollama Modelfile written beside a GGUF file: chat template, stops, sampling defaults."""

from __future__ import annotations

import json
import re

from jielong.export.vocab import Vocab

# Ollama's chat templates are Go templates. With .Messages Ollama renders the whole
# conversation at once: .System holds the system messages (joined; newer versions keep them
# in .Messages too, so the range skips them). The {{ else }} branch is the one-turn form
# (.System, .Prompt, .Response) of Ollama versions before .Messages; .Response stays inside
# it because some versions pass no Response with .Messages (it would print "<no value>").
OLLAMA_TEMPLATES = {
    "chatml": """{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
{{ else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ .Response }}{{ if .Response }}<|im_end|>
{{ end }}
{{- end }}""",
    "llama3": """{{- if .Messages }}
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

{{ else }}
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}{{ if .Response }}<|eot_id|>{{ end }}
{{- end }}""",
    # Mistral puts the system prompt into the last user turn, as its own templates do.
    "mistral": """{{- if .Messages }}
{{- range $i, $m := .Messages }}
{{- if eq $m.Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ $m.Content }}[/INST]
{{- else if eq $m.Role "assistant" }} {{ $m.Content }}</s>
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]{{ if .Response }} {{ .Response }}</s>{{ end }}
{{- end }}""",
}
# A stop string per format besides the end-of-turn token: the start of a next turn.
_FORMAT_STOPS = {"chatml": "<|im_start|>", "llama3": "<|start_header_id|>", "mistral": "[INST]"}


def chat_format(template: str | list | None) -> str | None:
    """"chatml", "llama3" or "mistral" when the Jinja chat template is recognisably one of
    them, else None."""
    if isinstance(template, list):
        template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    if not template:
        return None
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "mistral"
    return None


def _param(value) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else f"{value:g}"


def ollama_modelfile(gguf_file: str, vocab: Vocab, generation: dict | None = None,
                     context_length: int | None = None) -> str:
    """An Ollama Modelfile for `gguf_file` (a name beside the Modelfile)."""
    generation = generation or {}
    fmt = chat_format(vocab.chat_template)
    lines = ["# Ollama Modelfile written by `jielong export gguf`.",
             "# Load it with: ollama create NAME -f Modelfile", "",
             f"FROM ./{gguf_file}", ""]
    if fmt:
        lines += [f'TEMPLATE """{OLLAMA_TEMPLATES[fmt]}"""', ""]
    else:
        lines += ["# No TEMPLATE: jielong does not recognise this model's chat format, so Ollama",
                  "# takes the chat template from the GGUF metadata (tokenizer.chat_template)", ""]
    stops: list[str] = []
    for key in ("eot", "eos"):
        if key in vocab.special:
            stops.append(vocab.tokens[vocab.special[key]])
    eos_ids = generation.get("eos_token_id")  # one id, or several that all end a reply
    for i in eos_ids if isinstance(eos_ids, list) else [eos_ids]:
        if isinstance(i, int) and 0 <= i < len(vocab.tokens):
            stops.append(vocab.tokens[i])
    if fmt:
        stops.append(_FORMAT_STOPS[fmt])
    for s in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {_param(s)}")
    if generation.get("do_sample") is False:
        lines.append("PARAMETER temperature 0")  # greedy decoding
    elif isinstance(generation.get("temperature"), int | float):
        lines.append(f"PARAMETER temperature {_param(generation['temperature'])}")
    for hf, ollama in (("top_p", "top_p"), ("top_k", "top_k")):
        v = generation.get(hf)
        if isinstance(v, int | float) and not isinstance(v, bool):
            lines.append(f"PARAMETER {ollama} {_param(v)}")
    if context_length and context_length < 8192:
        # Ollama's default context may be longer than the model was trained for.
        lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"


def ollama_name(name: str) -> str:
    """A model name Ollama accepts (lower case, no spaces), for the printed `ollama create`."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "model"
