"""PyGithub making the calls below against a capture server on 127.0.0.1.

The server (http.server, plain HTTP on an ephemeral loopback port) records each request as it
arrived on the socket: request line, headers in order, body. It answers with JSON shaped like
GitHub's, enough for PyGithub to build its objects and carry on. Prints
[{"call": NAME, "request_line": L, "headers": [[k, v], ..], "body_b64": B64}, ...] as JSON.

Run by tests/libraries.rs; needs `python3 -m pip install PyGithub`.
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from github import Auth, Github

captured = []
current = {"call": None}


def repo_json(base):
    return {
        "id": 1,
        "node_id": "R_1",
        "name": "API",
        "full_name": "Acme/API",
        "owner": {"login": "Acme", "id": 2, "type": "Organization"},
        "private": True,
        "url": base + "/repos/Acme/API",
        "default_branch": "main",
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_one(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        captured.append({
            "call": current["call"],
            "request_line": self.requestline,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_b64": base64.b64encode(body).decode("ascii"),
        })
        base = "http://%s:%d" % self.server.server_address
        path = self.path.split("?")[0]
        if self.command == "DELETE":
            return self.answer(204, None)
        if self.command == "GET" and path == "/repos/Acme/API":
            return self.answer(200, repo_json(base))
        if self.command == "PUT" and "/collaborators/" in path:
            return self.answer(201, {"id": 3, "permissions": "write"})
        if self.command == "POST" and path.endswith("/issues"):
            return self.answer(201, {"id": 4, "number": 7, "title": "t",
                                     "url": base + "/repos/Acme/API/issues/7"})
        if self.command == "PATCH" and path == "/repos/Acme/API":
            return self.answer(200, repo_json(base))
        return self.answer(200, {})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_one

    def answer(self, status, doc):
        data = b"" if doc is None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = "http://127.0.0.1:%d" % server.server_address[1]
    gh = Github(base_url=base, auth=Auth.Token("agentgate-placeholder-github"), retry=None,
                seconds_between_requests=0, seconds_between_writes=0)

    current["call"] = "get_repo"
    repo = gh.get_repo("Acme/API")
    current["call"] = "add_to_collaborators"
    repo.add_to_collaborators("mallory", "push")
    current["call"] = "create_issue"
    repo.create_issue(title="Found a bug", body="details", labels=["bug"],
                      assignees=["octocat"])
    current["call"] = "edit"
    repo.edit(private=False, has_issues=False)
    current["call"] = "delete"
    repo.delete()
    server.shutdown()
    json.dump(captured, sys.stdout)


if __name__ == "__main__":
    main()
