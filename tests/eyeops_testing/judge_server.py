"""A real HTTP server speaking the OpenAI chat-completions route, as an LLM judge for tests.

No judge model can run here, so the server grades deterministically from the request it gets:
a candidate equal to the reference → "Score: 5"; an empty candidate or one of odd length → a reply
without a score (the parser must count it); anything else → "Score: 3/5". It records every
request body so tests can check what eyeops sent (rubric, model, temperature).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PROMPT = re.compile(r"Reference answer:\n(?P<ref>.*)\n\nCandidate answer:\n(?P<cand>.*)\Z", re.DOTALL)


def verdict(reference: str, candidate: str) -> str:
    """The reply the test judge gives for one answer."""
    if candidate.strip() == reference.strip():
        return "The answer matches the reference.\nScore: 5"
    if not candidate.strip() or len(candidate) % 2:
        return "I cannot grade this answer."
    return "Partly right, a key fact is missing. Score: 3/5"


class JudgeServer:
    """``with JudgeServer(key) as server:`` → ``server.base_url`` (…/v1), ``server.requests``."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                return None

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "bad API key", "type": "auth"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                match = _PROMPT.search(body["messages"][-1]["content"])
                text = verdict(match["ref"], match["cand"]) if match else "no prompt found"
                return self._send(
                    200,
                    {
                        "id": f"judge-{len(server.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
