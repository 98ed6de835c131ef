"""The judge: a VLM behind an OpenAI-compatible chat API, asked once per item, under one shared rate limit.

`client.py` one question with retries; `stage.py` one item (cache, ask, cache); `ratelimit.py` the shared
bucket; `asking.py` one asker per question; `setup.py` a judge from a config; `dispatch.py` and `feed.py` the
producer's side (one `editbatch.judge` task per item); `workers.py` the judge workers `editbatch score` uses.
"""
