"""Safety guardrails (issue 17, in progress): guard models in Llama Guard / Qwen3Guard layout
(guard_models), the prompt-injection scanner and data marking (injection)."""
