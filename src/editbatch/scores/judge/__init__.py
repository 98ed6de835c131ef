"""The judge: a VLM behind an OpenAI-compatible chat API, asked once per item, under one shared rate limit."""
