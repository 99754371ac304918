"""The Ollama Modelfile: chat templates (rendered by Go's text/template when it is
installed), stops and sampling defaults."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from gguf_helpers import (
    LLAMA3_TEMPLATE,
    MISTRAL_TEMPLATE,
    fresh_copy,
    make_model,
    make_tokenizer,
    read,
)

from jielong.export.gguf import export_gguf
from jielong.export.modelfile import OLLAMA_TEMPLATES, chat_format
from jielong.tokenizer import CHAT_TEMPLATE, Tokenizer

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return make_tokenizer()


def test_chatml_modelfile(tmp_path, tok):
    d = make_model(tmp_path / "demo", tok, generation={"temperature": 0.7, "top_p": 0.9})
    out = export_gguf(d, tmp_path / "export" / "demo.gguf", "q8_0")
    assert out == tmp_path / "export" / "demo.gguf" and out.is_file()
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    lines = modelfile.splitlines()
    assert "FROM ./demo.gguf" in lines
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for piece in ("{{ .System }}", "range .Messages", "{{ .Role }}", "{{ .Content }}",
                  "{{ .Prompt }}", "{{ .Response }}", "<|im_start|>assistant\n"):
        assert piece in template, piece
    assert template.count("{{") == template.count("}}")
    opened = sum(template.count(k) for k in ("{{ if", "{{- if", "{{ range", "{{- range"))
    closed = template.count("{{ end }}") + template.count("{{- end }}")
    assert opened == closed
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert 'PARAMETER stop "<|endoftext|>"' in lines
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER top_p 0.9" in lines
    assert "PARAMETER num_ctx 256" in lines
    meta, _ = read(out)
    assert meta["general.sampling.temp"] == pytest.approx(0.7)
    assert meta["tokenizer.ggml.eot_token_id"] == 2 and meta["tokenizer.ggml.eos_token_id"] == 0
    assert meta["tokenizer.ggml.add_bos_token"] is False


def test_unrecognised_chat_format(tmp_path, tok):
    tok = fresh_copy(tok)
    tok.config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    d = make_model(tmp_path / "m", tok)
    out = export_gguf(d)
    modelfile = (out.parent / "Modelfile").read_text()
    assert "TEMPLATE" not in modelfile.replace("# No TEMPLATE", "")
    assert "tokenizer.chat_template" in modelfile
    assert read(out)[0]["tokenizer.chat_template"] == tok.config["chat_template"]


def test_chat_format_detection():
    assert chat_format(CHAT_TEMPLATE) == "chatml"
    assert chat_format(LLAMA3_TEMPLATE) == "llama3"
    assert chat_format(MISTRAL_TEMPLATE) == "mistral"
    assert chat_format([{"name": "default", "template": CHAT_TEMPLATE}]) == "chatml"
    assert chat_format(None) is None and chat_format("{{ messages }}") is None


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_ollama_templates_render_like_the_jinja_templates(tmp_path, tok):
    """Render the Modelfile templates with Go's text/template (Ollama's engine, with its
    missingkey=zero option and the values Ollama passes) and compare with the Jinja output."""
    (tmp_path / "go.mod").write_text("module render\n\ngo 1.19\n")
    (tmp_path / "main.go").write_text('''package main

import (
	"fmt"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	src, _ := os.ReadFile(os.Args[1])
	t := template.Must(template.New("").Option("missingkey=zero").Parse(string(src)))
	msgs := []*Message{{"system", "Be kind."}, {"user", "Hi"}, {"assistant", "Hello!"}, {"user", "天氣如何?"}}
	if err := t.Execute(os.Stdout, map[string]any{"System": "Be kind.", "Messages": msgs}); err != nil {
		panic(err)
	}
	fmt.Print("\\x00")
	if err := t.Execute(os.Stdout, map[string]any{"System": "", "Prompt": "Hi", "Response": "Yo"}); err != nil {
		panic(err)
	}
}
''')
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "天氣如何?"}]
    llama3 = fresh_copy(tok)
    llama3.config["chat_template"] = LLAMA3_TEMPLATE
    llama3.config["bos_token"] = ""  # llama.cpp adds the bos token itself
    for fmt, jinja in (("chatml", tok), ("llama3", llama3)):
        (tmp_path / f"{fmt}.tmpl").write_text(OLLAMA_TEMPLATES[fmt])
        run = subprocess.run(["go", "run", "main.go", f"{fmt}.tmpl"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "GOFLAGS": "-mod=mod"})
        assert run.returncode == 0, run.stderr
        chat, one_turn = run.stdout.split("\x00")
        assert chat == jinja.apply_chat_template(messages, add_generation_prompt=True), fmt
        assert "Hi" in one_turn and one_turn.endswith("Yo" + ("<|im_end|>\n" if fmt == "chatml" else "<|eot_id|>"))
