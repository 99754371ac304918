"""Safety guardrails."""
