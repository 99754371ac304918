"""Safety: policy, detectors, rails, crisis resources and moderation (DESIGN.md)."""
