"""Serving a model (`jielong serve`, `command`): a FastAPI app (`app`) composed of the
OpenAI-compatible routes (`openai_routes`) and the web chat's (`chat_routes`, and the arena's
`arena_routes`), with what they share one layer down (`served`, `schemas`, `body`, `guard`,
`hosts`, `errors`, `streaming`, `metrics`); the web chat's conversations, feedback and arena
votes (`store`) and their export as training data (`feedback`). Needs the serving extra
(fastapi, uvicorn, prometheus-client), except `command`, `hosts`, `store` and `feedback`."""
