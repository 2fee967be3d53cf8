"""Google API Python client (googleapiclient) calls against a capturing http object.

Builds the Gmail v1 service from the client's bundled (static) discovery document, makes the
calls below, and prints every HTTP request the library handed to its http object as JSON:
[{"call": NAME, "method": M, "uri": U, "headers": {..}, "body_b64": B64}, ...].
The capturing http answers like Google would, enough for the library to carry on: a resumable
start gets a Location with an upload_id, chunks get 308 with a Range until the last one, a batch
gets a multipart/mixed answer with one part per Content-ID. Nothing leaves the process.

Run by tests/libraries.rs; needs `python3 -m pip install google-api-python-client`.
"""

import base64
import email.policy
import io
import json
import re
import sys
from email.message import EmailMessage

import httplib2
from googleapiclient import discovery
from googleapiclient.http import MediaIoBaseUpload

# The upload id the capturing http hands out for a resumable session; the test's fake
# upstream answers with the same one.
SESSION = "LIBRARY-SESSION-1"

captured = []
current = {"call": None}


class CapturingHttp:
    """Stands in for httplib2.Http: records each request and answers it."""

    def __init__(self):
        self.uploaded = 0

    def request(self, uri, method="GET", body=None, headers=None, redirections=5,
                connection_type=None):
        if hasattr(body, "read"):
            # A resumable chunk of a stream upload (googleapiclient's _StreamSlice).
            body = body.read()
        if isinstance(body, str):
            body = body.encode("utf-8")
        body = body or b""
        captured.append({
            "call": current["call"],
            "method": method,
            "uri": uri,
            "headers": dict(headers or {}),
            "body_b64": base64.b64encode(body).decode("ascii"),
        })
        return self.answer(uri, method, headers or {}, body)

    def answer(self, uri, method, headers, body):
        if "/batch" in uri.split("?")[0]:
            return batch_answer(headers, body)
        if "uploadType=resumable" in uri and "upload_id=" not in uri:
            location = uri + "&upload_id=" + SESSION
            return response(200, {"location": location}), b""
        if "upload_id=" in uri:
            # Content-Range: bytes a-b/total
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", headers.get("Content-Range", ""))
            end, total = int(m.group(2)), m.group(3)
            if total != "*" and end + 1 == int(total):
                return response(200, {}), b'{"id":"msg-1","labelIds":["SENT"]}'
            return response(308, {"range": "bytes=0-%d" % end}), b""
        return response(200, {}), b'{"id":"x-1","labels":[],"message":{"id":"m-1"}}'


def response(status, headers):
    r = httplib2.Response({"status": str(status), "content-type": "application/json"})
    r.update(headers)
    r.status = status
    return r


def batch_answer(headers, body):
    ids = re.findall(rb"Content-ID: <([^>]+)>", body)
    boundary = "batch_answer_boundary"
    parts = []
    for cid in ids:
        parts.append(
            "--%s\r\nContent-Type: application/http\r\nContent-ID: <response-%s>\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"id\":\"b-1\"}\r\n"
            % (boundary, cid.decode())
        )
    content = ("".join(parts) + "--%s--\r\n" % boundary).encode()
    return response(200, {"content-type": "multipart/mixed; boundary=" + boundary}), content


def message(attachment_size):
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "agent@acme.com"
    msg["To"] = '"Smith, John" <JS@Example.COM>, bob@acme.com'
    msg["Cc"] = "Jörg <jorg@acme.com>"
    msg["Bcc"] = "audit@partner.example"
    msg["Subject"] = "Q3 résumé"
    msg.set_content("Hello,\nthe report is attached.\n")
    # Pseudo-random bytes, so that the attachment is not trivially compressible.
    data = bytes((i * 7919 + (i >> 8)) % 256 for i in range(attachment_size))
    msg.add_attachment(data, maintype="application", subtype="pdf", filename="report Q3.pdf")
    return msg.as_bytes()


def call(name, req):
    current["call"] = name
    return req.execute()


def main():
    http = CapturingHttp()
    service = discovery.build("gmail", "v1", http=http, static_discovery=True,
                              cache_discovery=False)
    users = service.users()
    small = message(2000)
    raw = base64.urlsafe_b64encode(small).decode("ascii")

    call("send_raw", users.messages().send(userId="me", body={"raw": raw}))
    call("send_media", users.messages().send(
        userId="me", media_body=MediaIoBaseUpload(io.BytesIO(small), mimetype="message/rfc822")))
    call("send_multipart", users.messages().send(
        userId="me", body={"threadId": "t-1"},
        media_body=MediaIoBaseUpload(io.BytesIO(small), mimetype="message/rfc822")))
    # 600 KiB of attachment in 256 KiB chunks: a start and several chunk PUTs.
    big = message(600 * 1024)
    call("send_resumable", users.messages().send(
        userId="me", media_body=MediaIoBaseUpload(
            io.BytesIO(big), mimetype="message/rfc822", chunksize=256 * 1024, resumable=True)))
    call("drafts_create", users.drafts().create(
        userId="me", body={"message": {"raw": raw}}))
    call("trash", users.messages().trash(userId="me", id="18c0ffee"))
    call("labels_list", users.labels().list(userId="me"))

    current["call"] = "batch"
    answers = []
    batch = service.new_batch_http_request(callback=lambda rid, resp, exc: answers.append(exc))
    batch.add(users.messages().list(userId="me", maxResults=5, q="is:unread"))
    batch.add(users.messages().get(userId="me", id="18c0ffee", format="metadata"))
    batch.add(users.messages().send(userId="me", body={"raw": raw}))
    batch.add(users.messages().modify(userId="me", id="18c0ffee",
                                      body={"removeLabelIds": ["UNREAD"]}))
    batch.execute(http=http)
    if len(answers) != 4 or any(answers):
        sys.exit("the batch did not complete: %r" % answers)

    json.dump({"captured": captured, "resumable_total": len(big)}, sys.stdout)


if __name__ == "__main__":
    main()
