"""A fake OpenAI-compatible chat server on 127.0.0.1 for the judge tests.

The item is found by `id=<item>` in the prompt; `plan[item]` lists what to
answer on successive requests (the last entry repeats): "ok", "429",
"500", "filter" (HTTP 400 with the content-filter error shape), "badjson"
(a 200 whose answer is not JSON), "hang" (answers after `hang_s`). Every
request is counted per item, with its arrival time.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = {"edit_done": 8, "not_over_edited": 6, "naturalness": 9, "no_artifacts": 4, "reason": "looks fine"}
FILTER_ERROR = {"error": {"message": "The response was filtered due to the prompt triggering the content management "
                                     "policy.", "type": None, "param": "prompt", "code": "content_filter",
                          "status": 400, "innererror": {"code": "ResponsibleAIPolicyViolation",
                                                        "content_filter_result": {"violence": {"filtered": True}}}}}


class FakeJudge:
    def __init__(self, plan: dict[str, list[str]] | None = None, *, port: int = 0, hang_s: float = 5.0,
                 delay_s: float = 0.0):
        self.plan = plan or {}
        self.hang_s = hang_s
        self.delay_s = delay_s
        self.requests: dict[str, list[float]] = {}
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, item: str) -> int:
        with self.lock:
            return len(self.requests.get(item, []))

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"][0]["text"]
                item = re.search(r"id=(\S+)", prompt).group(1)
                with fake.lock:
                    times = fake.requests.setdefault(item, [])
                    times.append(time.time())
                    fake.bodies.append(body)
                    plan = fake.plan.get(item, ["ok"])
                    action = plan[min(len(times) - 1, len(plan) - 1)]
                if fake.delay_s:
                    time.sleep(fake.delay_s)
                if action == "hang":
                    time.sleep(fake.hang_s)
                    action = "ok"
                if action == "429":
                    self._send(429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
                               {"Retry-After": "1"})
                elif action == "500":
                    self._send(500, {"error": {"message": "server error"}})
                elif action == "filter":
                    self._send(400, FILTER_ERROR)
                else:
                    content = "I think it is about 7/10 overall." if action == "badjson" else json.dumps(ANSWER)
                    self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": content}}]})

            def _send(self, code: int, data: dict, headers: dict | None = None) -> None:
                raw = json.dumps(data).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to tell it

        return Handler
