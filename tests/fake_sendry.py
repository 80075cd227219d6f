#!/usr/bin/python3
"""Fake Sendry HTTP API for the sendry-sync tests, demo and benchmark.

Standard library only (Python 3.11).  Usable two ways:

* as a module (pytest)::

      fs = FakeSendry(api_key="sn_test_fake", audience_id="aud_test",
                      audiences={"aud_trial": "Trial", "aud_customers": "Customers"})
      fs.start()
      ...  # point the worker at fs.url
      fs.wait_for(lambda f: len(f.contacts) == 3)
      fs.stop()

* as a CLI (shell demo / bench scripts)::

      /usr/bin/python3 tests/fake_sendry.py --port-file /tmp/port [--rate-limit 100/10 | --no-rate-limit]
                                            [--audience-id ID] [--extra-audience ID ...]

  The CLI prints ``fake-sendry listening on http://127.0.0.1:PORT`` and serves
  until SIGTERM/SIGINT.  Scripts drive it through the unauthenticated
  ``/_control/...`` endpoints (see ``FakeSendry._control``).

Implemented endpoints (behaviour follows /work/shared/docs/sendry-api.md):

    GET    /v1/audiences?limit=&cursor=             every audience, paginated
    GET    /v1/audiences/{id}
    GET    /v1/audiences/{id}/contacts?limit=&cursor=   its members (contacts), paginated
    POST   /v1/audiences/{id}/contacts          {contact_ids:[1-100]} -> {added} (members not counted)
    DELETE /v1/audiences/{id}/contacts/{cid}    -> {deleted:true}; 404 if not a member
    POST   /v1/contacts/import                  upsert by e-mail, <= 1000 items
    POST   /v1/contacts                         create (upsert by e-mail in the fake)
    GET    /v1/contacts/by-email?email=[&audience_id=]
    PATCH  /v1/contacts/by-email?email=
    GET    /v1/contacts/{id}
    PUT    /v1/contacts/{id}
    DELETE /v1/contacts/{id}
    GET    /v1/unsubscribes?limit=&cursor=[&email=&list_id=]
    GET    /v1/suppression?limit=&cursor=[&email=]
    POST   /v1/events                           {name, event_id?, contact_email?, contact_id?, payload?}
    GET    /v1/events?limit=&cursor=[&name=]    the ingested events, oldest first
    GET    /v1/events/{id}

Events (sendry-api.md section 9, the OpenAPI schema of postV1Events): only `name` is
required (a string of 1-200 characters); `event_id` (a string of at most 200),
`contact_email` (an address), `contact_id` (a string) and `payload` (an object, {} when
absent) are optional and checked when present; anything else is a 422 validation_error
whose message names the field. The answer is {id: "evt_N", external_id (the event_id or
null), name, contact_email, contact_id, payload, received_at, processed_at, triggered_runs}:
the contact fields as sent, the missing one filled in when the fake knows the contact
(by contact_id, else by address); the contact need not exist (the spec has no 404 here).
An event_id seen before is answered 200 with the original event plus "deduped": true,
and nothing else happens (no new event, no run); a first answer carries no "deduped".
Tests read fake.events, fake.events_json(), fake.event_dedupes ({event_id: repeats}) and
fake.events_deduped; scripts GET /_control/events and /_control/stats.

    POST   /v1/automations                      {name, trigger_type, trigger_config?, ...} -> a draft
    GET    /v1/automations?limit=&cursor=
    GET    /v1/automations/{id}
    POST   /v1/automations/{id}/activate        status "active"
    GET    /v1/automations/{id}/runs?limit=&cursor=

Automations: only what a test of an event trigger needs (no steps, pause, archive, manual
runs, segments). The body is checked as the spec's schema has it (name 1-200, description
<= 1000, trigger_type and reentry_policy from their enums, trigger_config an object,
reentry_cooldown_seconds an integer >= 1). reentry_policy defaults to once_per_contact
(the spec gives no default). An ingested event (not a deduped repeat) starts one run
{id: "run_N", automation_id, contact_id, contact_email, trigger_event_id (the event's
id), status "in_progress", context {event: {id, name, payload}}, ...} of each active
automation with trigger_type "event" whose trigger_config.event_name is the event's name
(the spec does not name the key; without it, every event matches), for a contact the fake
knows, as its reentry_policy allows; the event's triggered_runs counts them. Tests read
fake.automations and fake.runs_json(); scripts GET /_control/automations.

Audiences: several exist at once (``audience_id``, the one the worker is configured
with, plus ``audiences``; add_audience()/remove_audience() at run time); an unknown
audience id is a 404 everywhere. Membership is as the API has it: an import or a create
with ``audience_id`` adds the contact to that audience (and leaves its other memberships
alone), the audience endpoints add and remove members, removing a member never deletes
the contact, and deleting an audience removes its memberships but not the contacts.

Every request goes through these checks, in order: record, drop_next, lose_answer_next
(noted here, done once the request is applied: no answer at all), delay,
auth (401 / 403 for a read-only key on writes / 403 for a key without the events scope
on /v1/events, reads included), per-key rate limit, fail_next,
fail_fraction, fail_emails, fail_events (POST /v1/events by name and/or contact_email),
then the endpoint (validation, then the work). fail_next, drop_next and lose_answer_next
match by path prefix and, with method=, by method (the worker's start-up GET
/v1/events?limit=1 shares the event's path). down() takes the whole API away (the port refuses
connections) until up(); POST /_control/down {"seconds": N} does it from a script.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import datetime
import http
import json
import math
import os
import random
import re
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["FakeSendry", "main"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_IMPORT = 1000
MAX_NAME_LEN = 200
MAX_METADATA_VALUE_LEN = 1000
MAX_EVENT_ID_LEN = 200  # sendry-api.md section 9: event_id at most 200 characters
MAX_DESCRIPTION_LEN = 1000
TRIGGER_TYPES = ("event", "contact_added_to_segment", "schedule", "manual")
REENTRY_POLICIES = ("once_per_contact", "cooldown", "always")
SUPPRESSION_REASONS = ("hard_bounce", "complaint", "unsubscribe", "manual")

DEFAULT_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    409: "conflict",
    422: "validation_error",
    429: "rate_limited",
}


def default_error_code(status: int) -> str:
    if status in DEFAULT_ERROR_CODES:
        return DEFAULT_ERROR_CODES[status]
    return "internal_error" if status >= 500 else "error"


class RawBody:
    """An answer sent as it is, not as JSON (an HTML page from a proxy, problem+json)."""

    def __init__(self, data, content_type):
        self.data = data.encode() if isinstance(data, str) else data
        self.content_type = content_type


def error_body(status, code=None, message=None, shape="nested", retry_after_body=None, details=None):
    """Build an error body in one of the two documented shapes."""
    code = code or default_error_code(status)
    if message is None:
        try:
            message = http.HTTPStatus(status).phrase
        except ValueError:
            message = "Error"
    if shape == "flat":
        # Legacy shape (D-old docs). The docs don't say where retry_after goes
        # in this shape; we put it in details.
        flat_details = dict(details or {})
        if retry_after_body is not None:
            flat_details["retry_after"] = retry_after_body
        return {"statusCode": status, "code": code, "message": message, "details": flat_details}
    err = {"code": code, "message": message}
    if retry_after_body is not None:
        err["retry_after"] = retry_after_body
    if details is not None:
        err["details"] = details
    return {"error": err}


def now_iso() -> str:
    """Current time as ISO-8601 UTC, e.g. 2026-05-11T10:00:00.123Z."""
    return (
        datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class ApiError(Exception):
    """Raised by endpoint code; turned into a nested error response."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status = status
        self.code = code or default_error_code(status)
        self.message = message


def _encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"idx:{index}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("idx:"):
            raise ValueError(cursor)
        index = int(raw[4:])
        if index < 0:
            raise ValueError(cursor)
        return index
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(422, f"Invalid cursor {cursor!r}") from None


def _n_contacts(body) -> int:
    """How many contacts a request body carries (for request summaries)."""
    if isinstance(body, dict):
        contacts = body.get("contacts")
        if isinstance(contacts, list):
            return len(contacts)
        if "email" in body:
            return 1
    return 0


def _matches(path_prefix, want_method, method, path) -> bool:
    """An injected fault's filter: the path's prefix and, when given, the method."""
    return ((path_prefix is None or path.startswith(path_prefix))
            and (want_method is None or want_method.upper() == method))


def _is_events_tree(path: str) -> bool:
    """/v1/events and everything under it (the events scope covers reads too)."""
    return path == "/v1/events" or path.startswith("/v1/events/")


def _is_events_path(path: str) -> bool:
    """/v1/events, with or without the OpenAPI spec's trailing slash."""
    return path in ("/v1/events", "/v1/events/")


def _parse_json(raw: bytes):
    """Return (parsed, ok). An empty body parses as (None, True)."""
    if not raw:
        return None, True
    try:
        return json.loads(raw.decode("utf-8")), True
    except (UnicodeDecodeError, ValueError):
        return None, False


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # lets stop()/start() rebind the same port
    request_queue_size = 128

    def __init__(self, address, handler, fake):
        self.fake = fake
        self._conns = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), which can stall on a
        # reverse DNS lookup; we know the name already.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    # Track open (keep-alive) connections so stop() can cut them; otherwise
    # their daemon threads would keep answering after the server "stopped".
    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self):
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)) and not self.fake.verbose:
            return  # clients hanging up (or refusing our certificate) are routine in tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response has Content-Length
    server_version = "FakeSendry/1.0"
    sys_version = ""
    disable_nagle_algorithm = True  # headers and body are separate writes
    timeout = 120  # idle keep-alive connections eventually go away

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        if self.server.fake.verbose:
            sys.stderr.write(f"fake-sendry: {self.address_string()} {format % args}\n")

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked). ValueError if malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # Skip trailers up to the blank line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise ValueError("short body")
        return data

    def _send(self, status, obj, extra_headers=None):
        raw = isinstance(obj, RawBody)
        data = obj.data if raw else json.dumps(obj).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", obj.content_type if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra_headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _handle(self):
        fake = self.server.fake
        method = self.command
        try:
            raw = self._read_body()
        except ValueError as exc:
            # We can't find the next request on this connection; answer and close.
            self.close_connection = True
            self._send(400, error_body(400, message=f"Malformed request body: {exc}"))
            return

        split = urlsplit(self.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))

        if path == "/_control" or path.startswith("/_control/"):
            try:
                status, body = fake._control(method, path, query, raw)
            except Exception:  # a bug in the fake: make it visible
                traceback.print_exc()
                status, body = 500, error_body(500, message="fake-sendry control error")
            self._send(status, body)
            fake.run_after_control()
            return

        parsed, json_ok = _parse_json(raw)
        record = {
            "method": method,
            "path": path,
            "query": query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "json": parsed,
            "status": None,
            "time": time.monotonic(),
        }
        drop, delay, lose_answer = fake._begin(record)
        if fake.on_request:
            fake.on_request(record)
        if drop:
            # Request fully read; hang up without a single byte of response.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if delay > 0:
            fake._stopping.wait(delay)  # stop() cuts delays short

        try:
            status, body, headers = fake._respond(method, path, query, record["headers"], parsed, json_ok)
        except Exception:
            traceback.print_exc()
            status, body, headers = 500, error_body(500, message="fake-sendry internal error"), {}
        fake._finish(record, status)
        if lose_answer:
            # Applied; the client never learns the outcome (as on a kill -9 or a timeout).
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(status, body, headers)


# --------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------


class FakeSendry:
    """In-memory fake of the Sendry API with fault injection.

    Public state (read freely from tests; mutated only under ``self._lock``):
      requests  list of recorded request dicts (see module doc / brief)
      contacts  dict lower-cased email -> contact dict (``audiences`` is a set)
      audiences dict audience id -> audience dict (members: see members())
      stats     dict: str(status) -> count, plus "dropped"
      delay_all seconds to sleep before every answer (plain attribute)
    """

    def __init__(
        self,
        api_key="sn_test_fake",
        audience_id="aud_test",
        rate_limit=(100, 10.0),
        read_only_key=None,
        no_events_key=None,
        port=0,
        verbose=False,
        ssl_context=None,
        audiences=None,
    ):
        if rate_limit is not None:
            n, window = rate_limit
            if int(n) < 1 or float(window) <= 0:
                raise ValueError(f"bad rate_limit {rate_limit!r}")
            rate_limit = (int(n), float(window))
        self.api_key = api_key
        self.audience_id = audience_id
        # {id: name}: the configured audience first, then the extra ones (a list of ids
        # or a dict of id -> name). reset() comes back to these.
        extra = audiences or {}
        if not isinstance(extra, dict):
            extra = {aid: aid for aid in extra}
        self._configured_audiences = {audience_id: "Test audience", **extra}
        self.rate_limit = rate_limit
        self.read_only_key = read_only_key
        # A key that may write contacts and audiences but lacks the scope for events:
        # POST and GET /v1/events (and /v1/events/{id}) answer it 403 forbidden.
        self.no_events_key = no_events_key
        self.verbose = verbose
        self.ssl_context = ssl_context  # an ssl.SSLContext: serve HTTPS instead of HTTP
        self.delay_all = 0.0
        self.stuck_cursor = None  # GET /v1/unsubscribes answers this next_cursor forever
        self.on_request = None    # called with each request's record once it is read (tests)

        self._port_wanted = port
        self._server = None
        self._thread = None
        self._stopping = threading.Event()
        self._lock = threading.RLock()
        self._life_lock = threading.RLock()  # start/stop from down(), up() and their timer
        self._up_timer = None
        self._after_control = threading.local()
        self.reset()

    # ---- lifecycle -------------------------------------------------------

    def start(self):
        """Start serving in a background thread. After a stop(), restarts on the same port."""
        if self._server is not None:
            raise RuntimeError("FakeSendry already started")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port_wanted), _Handler, self)
        self._port_wanted = self._server.server_address[1]
        if self.ssl_context is not None:
            # The handshake runs in each connection's thread, on its first read.
            self._server.socket = self.ssl_context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-sendry",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self):
        """Stop serving and cut open connections, then wake delayed requests (they are
        applied, and their answer is lost). In that order: nothing is answered fast while
        it stops."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        self._stopping.set()
        self._thread.join(timeout=5)
        self._thread = None

    def down(self, seconds=None):
        """The API goes away: the port refuses connections and open ones are cut, until
        up() (or, with `seconds`, that much later, from a timer). Everything recorded is
        kept; a request under way when it goes down is still applied, its answer lost."""
        with self._life_lock:
            if self._up_timer is not None:
                self._up_timer.cancel()
                self._up_timer = None
            self.stop()
            if seconds is not None:
                self._up_timer = threading.Timer(float(seconds), self.up)
                self._up_timer.daemon = True
                self._up_timer.start()

    def up(self):
        """Serve again on the same port after down(); nothing happens while serving."""
        with self._life_lock:
            self._up_timer = None
            if self._server is None:
                self.start()

    @property
    def is_down(self) -> bool:
        return self._server is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        with self._life_lock:
            if self._up_timer is not None:
                self._up_timer.cancel()
                self._up_timer = None
        self.stop()

    @property
    def port(self) -> int:
        return self._port_wanted

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    # ---- test helpers ----------------------------------------------------

    def reset(self):
        """Forget everything: requests, contacts, faults, lists, rate counters, stats;
        the audiences are back to the configured ones, without members."""
        with self._lock:
            self.requests = []
            self.contacts = {}
            self._by_id = {}  # contact id -> the same dict as in self.contacts
            self._next_contact = 1
            self.unsubscribes = []
            self._next_unsub = 1
            self.suppressions = []
            self.stats = {"dropped": 0}
            self._rate = {}  # Authorization value -> deque of admitted times
            self._faults = []  # fail_next entries, FIFO
            self._drops = []  # [remaining, path_prefix, method]
            self._lost_answers = []  # [remaining, path_prefix, method]: lose_answer_next()
            self._delays = []  # [seconds, remaining]
            self._fraction = 0.0
            self._fraction_statuses = [503]
            self._fraction_retry_after = None
            self._rng = random.Random(1)
            self._reject_re = None
            self._fail_email = None  # (regex, status): fail_emails()
            self._fail_event = None  # (name regex|None, contact_email regex|None, status): fail_events()
            self.events = []  # ingested events, oldest first, each as first answered
            self._events_by_id = {}  # "evt_N" -> the same dict as in self.events
            self._events_by_external = {}  # event_id -> the same dict
            self._next_event = 1
            self.event_dedupes = {}  # event_id -> how many repeats were answered deduped
            self.automations = {}  # "auto_N" -> automation dict, in creation order
            self._next_automation = 1
            self.runs = []  # automation runs, oldest first
            self._next_run = 1
            self.delay_all = 0.0
            stamp = now_iso()
            self.audiences = {
                aid: {"id": aid, "name": name, "description": None, "created_at": stamp, "updated_at": stamp}
                for aid, name in self._configured_audiences.items()
            }

    def wait_for(self, predicate, timeout=10.0, message=None):
        """Poll predicate(self) every 20 ms until truthy; return its value.

        Raises AssertionError on timeout, with the last few requests for context.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if time.monotonic() >= deadline:
                what = message or getattr(predicate, "__name__", repr(predicate))
                recent = [
                    f"{r['method']} {r['path']} -> {r['status']}" for r in self.requests[-10:]
                ]
                raise AssertionError(
                    f"fake-sendry: timed out after {timeout}s waiting for {what}; "
                    f"{len(self.requests)} requests, {len(self.contacts)} contacts; "
                    f"last requests: {recent}"
                )
            time.sleep(0.02)

    def requests_matching(self, method=None, path_prefix=None):
        """Recorded requests filtered by method and/or path prefix."""
        return [
            r
            for r in list(self.requests)
            if (method is None or r["method"] == method)
            and (path_prefix is None or r["path"].startswith(path_prefix))
        ]

    def contact_json(self, email):
        """JSON form of a contact (audiences as a sorted list) or None."""
        with self._lock:
            c = self.contacts.get(email.lower())
            return None if c is None else self._contact_json(c)

    def contacts_json(self):
        """Every contact in its JSON form (what GET /_control/contacts answers)."""
        with self._lock:
            return [self._contact_json(c) for c in self.contacts.values()]

    def events_json(self, name=None):
        """The ingested events (each once, as first answered), oldest first; only those
        called `name` when it is given."""
        with self._lock:
            return [self._event_json(e) for e in self.events if name is None or e["name"] == name]

    def runs_json(self, automation_id=None):
        """The automation runs (of one automation when given), oldest first."""
        with self._lock:
            return [self._run_json(r) for r in self.runs
                    if automation_id is None or r["automation_id"] == automation_id]

    @property
    def events_deduped(self) -> int:
        """How many requests were answered with an earlier event (deduped: true)."""
        with self._lock:
            return sum(self.event_dedupes.values())

    def add_audience(self, audience_id, name=None):
        """Create an audience (or rename one that exists); returns its JSON."""
        with self._lock:
            stamp = now_iso()
            aud = self.audiences.setdefault(
                audience_id,
                {"id": audience_id, "name": name or audience_id, "description": None, "created_at": stamp},
            )
            if name:
                aud["name"] = name
            aud["updated_at"] = stamp
            return self._get_audience(audience_id)

    def remove_audience(self, audience_id):
        """Delete an audience: its memberships go, its contacts stay. KeyError if unknown."""
        with self._lock:
            del self.audiences[audience_id]
            for c in self.contacts.values():
                c["audiences"].discard(audience_id)

    def members(self, audience_id):
        """Sorted lower-cased emails of the audience's members."""
        with self._lock:
            return sorted(k for k, c in self.contacts.items() if audience_id in c["audiences"])

    # ---- fault injection -------------------------------------------------

    def fail_next(
        self,
        status,
        count=1,
        shape="nested",
        retry_after=None,
        retry_after_body=None,
        code=None,
        message=None,
        path_prefix=None,
        details=None,
        raw_body=None,
        content_type="text/html",
        method=None,
    ):
        """The next `count` (matching) requests get `status` with an error body: one of the
        documented shapes (with `details` if given), or `raw_body` sent as it is. Matching:
        the path starts with `path_prefix` and, when given, the method is `method` (the
        worker's start-up GET /v1/events?limit=1 is not a POST /v1/events)."""
        if shape not in ("nested", "flat"):
            raise ValueError(f"shape must be 'nested' or 'flat', not {shape!r}")
        status = int(status)
        with self._lock:
            self._faults.append(
                {
                    "status": status,
                    "remaining": int(count),
                    "shape": shape,
                    "retry_after": retry_after,
                    "retry_after_body": retry_after_body,
                    "code": code or default_error_code(status),
                    "message": message or f"Injected fault: {status}",
                    "path_prefix": path_prefix,
                    "method": method,
                    "details": details,
                    "raw_body": None if raw_body is None else RawBody(raw_body, content_type),
                }
            )

    def drop_next(self, count=1, path_prefix=None, method=None):
        """The next `count` (matching, as for fail_next) requests are read, then the socket
        is closed."""
        with self._lock:
            self._drops.append([int(count), path_prefix, method])

    def lose_answer_next(self, count=1, path_prefix=None, method=None):
        """The next `count` (matching) requests are applied as usual (an event is ingested),
        then the connection is closed without an answer: the client cannot tell whether it
        was applied. Counted in stats["answers_lost"]; the request keeps its status."""
        with self._lock:
            self._lost_answers.append([int(count), path_prefix, method])

    def delay_next(self, seconds, count=1):
        """Sleep `seconds` before answering each of the next `count` requests."""
        with self._lock:
            self._delays.append([float(seconds), int(count)])

    def fail_fraction(self, fraction, status=503, seed=1, retry_after=None):
        """Fail each write request with probability `fraction` (0 = off), with `status`, or
        one of several chosen at random (a list: [500, 502, 503]); with `retry_after`
        (seconds), the answer carries a Retry-After header (a 429 storm)."""
        statuses = [int(x) for x in status] if isinstance(status, (list, tuple)) else [int(status)]
        if not statuses:
            raise ValueError("fail_fraction: no status")
        with self._lock:
            self._fraction = float(fraction)
            self._fraction_statuses = statuses
            self._fraction_retry_after = retry_after
            self._rng = random.Random(seed)

    def reject_emails(self, regex):
        """Import/create requests with an email matching `regex` (re.search) get 422. None clears."""
        with self._lock:
            self._reject_re = re.compile(regex) if regex else None

    def fail_emails(self, regex, status=500):
        """Write requests whose body holds an email matching `regex` (re.search) get
        `status` (a row's own transient failure, while the others go through). None clears."""
        with self._lock:
            self._fail_email = (re.compile(regex), int(status)) if regex else None

    def fail_events(self, name=None, contact_email=None, status=500):
        """POST /v1/events whose `name` and/or `contact_email` match these regexes (re.search;
        both must match when both are given) get `status`, and the event is not ingested (one
        event's own failure, while the others go through). Both None clears."""
        with self._lock:
            if name is None and contact_email is None:
                self._fail_event = None
                return
            self._fail_event = (
                None if name is None else re.compile(name),
                None if contact_email is None else re.compile(contact_email),
                int(status),
            )

    def add_unsubscribe(self, email, reason=None, list_id=None):
        with self._lock:
            item = {
                "id": f"unsub_{self._next_unsub}",
                "email": email,
                "list_id": list_id,
                "reason": reason,
                "created_at": now_iso(),
            }
            self._next_unsub += 1
            self.unsubscribes.append(item)
            return dict(item)

    def add_suppression(self, email, reason="unsubscribe"):
        with self._lock:
            item = {"email": email, "reason": reason, "created_at": now_iso()}
            self.suppressions.append(item)
            return dict(item)

    def set_unsubscribed(self, email, unsubscribed=True):
        """Flip a contact's unsubscribed flag as Sendry would. KeyError if unknown."""
        with self._lock:
            c = self.contacts[email.lower()]
            c["unsubscribed"] = bool(unsubscribed)
            c["updated_at"] = now_iso()

    # ---- request pipeline (called from handler threads) -------------------

    def _count(self, key):
        self.stats[key] = self.stats.get(key, 0) + 1

    def _begin(self, record):
        """Record the request; return (drop?, delay seconds, lose the answer?)."""
        with self._lock:
            self.requests.append(record)
            for entry in self._drops:
                if _matches(entry[1], entry[2], record["method"], record["path"]):
                    entry[0] -= 1
                    if entry[0] <= 0:
                        self._drops.remove(entry)
                    self._count("dropped")
                    return True, 0.0, False
            lose = False
            for entry in self._lost_answers:
                if _matches(entry[1], entry[2], record["method"], record["path"]):
                    entry[0] -= 1
                    if entry[0] <= 0:
                        self._lost_answers.remove(entry)
                    self._count("answers_lost")
                    lose = True
                    break
            delay = float(self.delay_all or 0.0)
            if self._delays:
                entry = self._delays[0]
                delay += entry[0]
                entry[1] -= 1
                if entry[1] <= 0:
                    self._delays.pop(0)
            return False, delay, lose

    def _finish(self, record, status):
        with self._lock:
            record["status"] = status
            self._count(str(status))

    def _respond(self, method, path, query, headers, body, json_ok):
        """Auth, rate limit, injected faults, then the endpoint. Returns (status, body, headers)."""
        with self._lock:
            auth = headers.get("authorization")
            if auth is None:
                return 401, error_body(401, message="Missing Authorization header"), {}
            read_only = no_events = False
            if auth == f"Bearer {self.api_key}":
                pass
            elif self.read_only_key is not None and auth == f"Bearer {self.read_only_key}":
                read_only = True
            elif self.no_events_key is not None and auth == f"Bearer {self.no_events_key}":
                no_events = True
            else:
                return 401, error_body(401, message="Invalid API key"), {}
            if read_only and method in WRITE_METHODS:
                return 403, error_body(403, message="Insufficient API key scope"), {}
            if no_events and _is_events_tree(path):
                return 403, error_body(403, message="Insufficient API key scope"), {}

            # Sliding window per key over admitted requests; 429s are not admitted.
            if self.rate_limit is not None:
                limit, window = self.rate_limit
                times = self._rate.setdefault(auth, collections.deque())
                now = time.monotonic()
                while times and times[0] <= now - window:
                    times.popleft()
                if len(times) >= limit:
                    retry = max(1, math.ceil(times[0] + window - now))
                    return (
                        429,
                        error_body(429, message="Too many requests", retry_after_body=retry),
                        {"Retry-After": str(retry)},
                    )
                times.append(now)

            for fault in self._faults:
                if _matches(fault["path_prefix"], fault["method"], method, path):
                    fault["remaining"] -= 1
                    if fault["remaining"] <= 0:
                        self._faults.remove(fault)
                    extra = {}
                    if fault["retry_after"] is not None:
                        extra["Retry-After"] = str(fault["retry_after"])
                    body = fault["raw_body"] or error_body(
                        fault["status"],
                        fault["code"],
                        fault["message"],
                        fault["shape"],
                        fault["retry_after_body"],
                        fault["details"],
                    )
                    return fault["status"], body, extra

            if (
                self._fraction > 0
                and method in WRITE_METHODS
                and self._rng.random() < self._fraction
            ):
                st = self._rng.choice(self._fraction_statuses)
                extra = {}
                if self._fraction_retry_after is not None:
                    extra["Retry-After"] = str(self._fraction_retry_after)
                return st, error_body(st, message=f"Injected random fault: {st}"), extra

            if self._fail_email is not None and method in WRITE_METHODS:
                regex, st = self._fail_email
                if regex.search(json.dumps(body)):
                    return st, error_body(st, message=f"Injected fault for this contact: {st}"), {}

            if self._fail_event is not None and method == "POST" and _is_events_path(path):
                st = self._event_fault_status(body)
                if st is not None:
                    return st, error_body(st, message=f"Injected fault for this event: {st}"), {}

            try:
                if method in WRITE_METHODS and not json_ok:
                    raise ApiError(400, "Request body is not valid JSON")
                status, out = self._route(method, path, query, body)
                return status, out, {}
            except ApiError as exc:
                return exc.status, error_body(exc.status, exc.code, exc.message), {}

    # ---- endpoints ---------------------------------------------------------

    def _route(self, method, path, query, body):
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        seg = [unquote(s) for s in path.split("/")[1:]]
        n = len(seg)
        if n >= 2 and seg[0] == "v1":
            kind = seg[1]
            if kind == "audiences":
                if n == 2 and method == "GET":
                    return 200, self._paginate([self._get_audience(a) for a in self.audiences], query)
                if n == 3 and method == "GET":
                    return 200, self._get_audience(seg[2])
                if n == 4 and seg[3] == "contacts" and method == "GET":
                    return 200, self._list_audience_members(seg[2], query)
                if n == 4 and seg[3] == "contacts" and method == "POST":
                    return 200, self._add_audience_members(seg[2], body)
                if n == 5 and seg[3] == "contacts" and method == "DELETE":
                    return 200, self._remove_audience_member(seg[2], seg[4])
            elif kind == "contacts":
                if n == 2 and method == "POST":
                    return 200, self._create_contact(body)
                if n == 3 and seg[2] == "import" and method == "POST":
                    return 200, self._import(body)
                if n == 3 and seg[2] == "by-email" and method == "GET":
                    return 200, self._get_by_email(query)
                if n == 3 and seg[2] == "by-email" and method == "PATCH":
                    return 200, self._patch_by_email(query, body)
                if n == 3 and seg[2] not in ("import", "by-email"):
                    if method == "GET":
                        return 200, self._contact_json(self._contact_by_id(seg[2]))
                    if method == "PUT":
                        return 200, self._update_contact(self._contact_by_id(seg[2]), body)
                    if method == "DELETE":
                        self._delete_contact(self._contact_by_id(seg[2]))
                        return 200, {"deleted": True}
            elif kind == "events":
                if n == 2 and method == "POST":
                    return 200, self._ingest_event(body)
                if n == 2 and method == "GET":
                    items = self.events
                    if query.get("name"):
                        items = [e for e in items if e["name"] == query["name"]]
                    return 200, self._paginate([self._event_json(e) for e in items], query)
                if n == 3 and method == "GET":
                    event = self._events_by_id.get(seg[2])
                    if event is None:
                        raise ApiError(404, "Event not found")
                    return 200, self._event_json(event)
            elif kind == "automations":
                if n == 2 and method == "POST":
                    return 200, self._create_automation(body)
                if n == 2 and method == "GET":
                    return 200, self._paginate([self._automation_json(a) for a in self.automations.values()], query)
                if n == 3 and method == "GET":
                    return 200, self._automation_json(self._automation(seg[2]))
                if n == 4 and seg[3] == "activate" and method == "POST":
                    return 200, self._activate_automation(seg[2])
                if n == 4 and seg[3] == "runs" and method == "GET":
                    aid = self._automation(seg[2])["id"]
                    return 200, self._paginate(
                        [self._run_json(r) for r in self.runs if r["automation_id"] == aid], query)
            elif kind == "unsubscribes" and n == 2 and method == "GET" and self.stuck_cursor:
                # A broken list: it always says there is more, at the same cursor.
                return 200, {"data": [dict(x) for x in self.unsubscribes[:int(query.get("limit", 50))]],
                             "has_more": True, "next_cursor": self.stuck_cursor}
            elif kind == "unsubscribes" and n == 2 and method == "GET":
                items = self.unsubscribes
                if query.get("email"):
                    items = [u for u in items if u["email"].lower() == query["email"].lower()]
                if "list_id" in query:
                    items = [u for u in items if u["list_id"] == (query["list_id"] or None)]
                return 200, self._paginate(items, query)
            elif kind == "suppression" and n == 2 and method == "GET":
                items = self.suppressions
                if query.get("email"):
                    items = [s for s in items if s["email"].lower() == query["email"].lower()]
                return 200, self._paginate(items, query)
        raise ApiError(404, f"Not found: {method} {path}")

    def _get_audience(self, aid):
        self._check_audience(aid)
        members = sum(1 for c in self.contacts.values() if aid in c["audiences"])
        return dict(self.audiences[aid], member_count=members)

    def _check_audience(self, aid):
        if aid not in self.audiences:
            raise ApiError(404, "Audience not found")

    def _list_audience_members(self, aid, query):
        self._check_audience(aid)
        members = sorted((c for c in self.contacts.values() if aid in c["audiences"]),
                         key=lambda c: int(c["id"][3:]))
        return self._paginate([self._contact_json(c) for c in members], query)

    def _add_audience_members(self, aid, body):
        self._check_audience(aid)
        ids = body.get("contact_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            raise ApiError(422, "contact_ids must be a list of 1-100 contact ids")
        contacts = []
        for cid in ids:
            if cid not in self._by_id:
                raise ApiError(404, f"Contact not found: {cid}")
            contacts.append(self._by_id[cid])
        added = 0
        for c in contacts:
            if aid not in c["audiences"]:
                c["audiences"].add(aid)
                added += 1
        return {"added": added}

    def _remove_audience_member(self, aid, cid):
        self._check_audience(aid)
        c = self._by_id.get(cid)
        if c is None or aid not in c["audiences"]:
            raise ApiError(404, "Contact not found in audience")
        c["audiences"].discard(aid)
        return {"deleted": True}

    def _validate_fields(self, item, where, require_email, check_reject):
        """422 on any invalid contact field. `where` prefixes messages, e.g. 'contacts[3].'."""
        if not isinstance(item, dict):
            raise ApiError(422, f"{where or 'body'} must be a JSON object")
        if require_email or "email" in item:
            email = item.get("email")
            if not isinstance(email, str) or not EMAIL_RE.match(email):
                raise ApiError(422, f"{where}email: invalid email address {email!r}")
            if check_reject and self._reject_re is not None and self._reject_re.search(email):
                raise ApiError(422, f"{where}email: email address {email!r} was rejected")
        for name in ("first_name", "last_name"):
            value = item.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_LEN):
                raise ApiError(
                    422, f"{where}{name}: must be a string of at most {MAX_NAME_LEN} characters"
                )
        meta = item.get("metadata")
        if meta is not None:
            if not isinstance(meta, dict):
                raise ApiError(422, f"{where}metadata: must be an object")
            for key, value in meta.items():
                if not isinstance(value, str):
                    raise ApiError(
                        422,
                        f"{where}metadata.{key}: must be a string, got {type(value).__name__}",
                    )
                if len(value) > MAX_METADATA_VALUE_LEN:
                    raise ApiError(
                        422,
                        f"{where}metadata.{key}: longer than {MAX_METADATA_VALUE_LEN} characters",
                    )
        if "unsubscribed" in item and not isinstance(item["unsubscribed"], bool):
            raise ApiError(422, f"{where}unsubscribed: must be a boolean")

    def _audience_arg(self, body):
        aid = body.get("audience_id")
        if aid is None:
            return None
        if not isinstance(aid, str):
            raise ApiError(422, "audience_id: must be a string")
        self._check_audience(aid)
        return aid

    def _apply_fields(self, contact, item):
        """Copy the fields present in `item` onto `contact` (never touches absent ones)."""
        for name in ("email", "first_name", "last_name"):
            if name in item:
                contact[name] = item[name]
        if "metadata" in item:
            meta = item["metadata"]
            contact["metadata"] = dict(meta) if meta is not None else None
        if "unsubscribed" in item:
            contact["unsubscribed"] = item["unsubscribed"]

    def _upsert(self, item, audience_id, stamp):
        """Create or update by lower-cased email. Returns (contact, created?)."""
        key = item["email"].lower()
        contact = self.contacts.get(key)
        created = contact is None
        if created:
            contact = {
                "id": f"ct_{self._next_contact}",
                "email": item["email"],
                "first_name": None,
                "last_name": None,
                "metadata": None,
                "unsubscribed": False,
                "audiences": set(),
                "created_at": stamp,
                "updated_at": stamp,
            }
            self._next_contact += 1
            self.contacts[key] = contact
            self._by_id[contact["id"]] = contact
        self._apply_fields(contact, item)
        contact["updated_at"] = stamp
        if audience_id is not None:
            contact["audiences"].add(audience_id)
        return contact, created

    def _import(self, body):
        if not isinstance(body, dict):
            raise ApiError(422, "Body must be a JSON object")
        items = body.get("contacts")
        if not isinstance(items, list) or not items:
            raise ApiError(422, "contacts: must be a non-empty array")
        if len(items) > MAX_IMPORT:
            raise ApiError(422, f"contacts: at most {MAX_IMPORT} items allowed, got {len(items)}")
        for i, item in enumerate(items):
            self._validate_fields(item, f"contacts[{i}].", require_email=True, check_reject=True)
        audience_id = self._audience_arg(body)
        stamp = now_iso()
        created = 0
        for item in items:
            _, was_created = self._upsert(item, audience_id, stamp)
            created += was_created
        return {"created": created, "updated": len(items) - created, "total": len(items)}

    def _create_contact(self, body):
        self._validate_fields(body, "", require_email=True, check_reject=True)
        audience_id = self._audience_arg(body)
        contact, _ = self._upsert(body, audience_id, now_iso())
        return self._contact_json(contact)

    def _contact_by_id(self, cid):
        contact = self._by_id.get(cid)
        if contact is None:
            raise ApiError(404, "Contact not found")
        return contact

    def _find_by_email(self, query):
        email = query.get("email")
        if not email:
            raise ApiError(422, "email: query parameter is required")
        contact = self.contacts.get(email.lower())
        aid = query.get("audience_id")
        if contact is None or (aid and aid not in contact["audiences"]):
            raise ApiError(404, "Contact not found")
        return contact

    def _get_by_email(self, query):
        return self._contact_json(self._find_by_email(query))

    def _patch_by_email(self, query, body):
        return self._update_contact(self._find_by_email(query), body)

    def _update_contact(self, contact, body):
        """Partial update (PATCH by-email and PUT by id); re-keys on an email change."""
        self._validate_fields(body, "", require_email=False, check_reject=False)
        old_key = contact["email"].lower()
        if "email" in body:
            new_key = body["email"].lower()
            if new_key != old_key:
                if new_key in self.contacts:
                    raise ApiError(409, f"A contact with email {body['email']!r} already exists")
                del self.contacts[old_key]
                self.contacts[new_key] = contact
        self._apply_fields(contact, body)
        contact["updated_at"] = now_iso()
        return self._contact_json(contact)

    def _delete_contact(self, contact):
        self.contacts.pop(contact["email"].lower(), None)
        self._by_id.pop(contact["id"], None)

    # ---- events (sendry-api.md section 9) -------------------------------------

    def _event_fault_status(self, body):
        """fail_events(): the status to answer this event body with, or None."""
        name_re, email_re, status = self._fail_event
        if not isinstance(body, dict):
            return None
        for regex, value in ((name_re, body.get("name")), (email_re, body.get("contact_email"))):
            if regex is not None and not (isinstance(value, str) and regex.search(value)):
                return None
        return status

    @staticmethod
    def _validate_event(body):
        """422 on a body the spec's schema refuses: only `name` is required; the optional
        fields, when present, must have their type (null is not a string or an object)."""
        if not isinstance(body, dict):
            raise ApiError(422, "body: must be a JSON object")
        if "name" not in body:
            raise ApiError(422, "name: is required")
        name = body["name"]
        if not isinstance(name, str):
            raise ApiError(422, f"name: must be a string, got {type(name).__name__}")
        if not 1 <= len(name) <= MAX_NAME_LEN:
            raise ApiError(422, f"name: must be 1-{MAX_NAME_LEN} characters, got {len(name)}")
        if "event_id" in body:
            event_id = body["event_id"]
            if not isinstance(event_id, str):
                raise ApiError(422, f"event_id: must be a string, got {type(event_id).__name__}")
            if len(event_id) > MAX_EVENT_ID_LEN:
                raise ApiError(
                    422, f"event_id: must be at most {MAX_EVENT_ID_LEN} characters, got {len(event_id)}"
                )
        if "contact_email" in body:
            email = body["contact_email"]
            if not isinstance(email, str) or not EMAIL_RE.match(email):
                raise ApiError(422, f"contact_email: invalid email address {email!r}")
        if "contact_id" in body and not isinstance(body["contact_id"], str):
            raise ApiError(
                422, f"contact_id: must be a string, got {type(body['contact_id']).__name__}"
            )
        if "payload" in body and not isinstance(body["payload"], dict):
            raise ApiError(422, f"payload: must be an object, got {type(body['payload']).__name__}")

    def _event_contact(self, body):
        """The contact an event names (by contact_id, else contact_email), or None."""
        contact = self._by_id.get(body["contact_id"]) if "contact_id" in body else None
        if contact is None and "contact_email" in body:
            contact = self.contacts.get(body["contact_email"].lower())
        return contact

    def _ingest_event(self, body):
        """POST /v1/events: validate, answer a known event_id with the original event and
        deduped: true (nothing else happens), else store the event and start its runs."""
        self._validate_event(body)
        external = body.get("event_id")
        if external is not None and external in self._events_by_external:
            self.event_dedupes[external] = self.event_dedupes.get(external, 0) + 1
            return dict(self._event_json(self._events_by_external[external]), deduped=True)
        contact = self._event_contact(body)
        stamp = now_iso()
        event = {
            "id": f"evt_{self._next_event}",
            "external_id": external,
            "name": body["name"],
            "contact_email": body.get("contact_email", contact["email"] if contact else None),
            "contact_id": body.get("contact_id", contact["id"] if contact else None),
            "payload": json.loads(json.dumps(body.get("payload", {}))),
            "received_at": stamp,
            "processed_at": stamp,
            "triggered_runs": 0,
        }
        self._next_event += 1
        event["triggered_runs"] = self._start_runs(event, contact, stamp)
        self.events.append(event)
        self._events_by_id[event["id"]] = event
        if external is not None:
            self._events_by_external[external] = event
        return self._event_json(event)

    def _start_runs(self, event, contact, stamp):
        """Start a run of every active "event" automation this event matches, for the
        event's contact; return how many started. A run needs a contact the fake knows
        (a run's contact_email is required in the spec): none for an unknown one."""
        if contact is None:
            return 0
        started = 0
        for auto in self.automations.values():
            if not self._automation_matches(auto, event) or not self._may_enter(auto, contact):
                continue
            self.runs.append({
                "id": f"run_{self._next_run}",
                "automation_id": auto["id"],
                "contact_id": contact["id"],
                "contact_email": contact["email"],
                "trigger_event_id": event["id"],
                "status": "in_progress",
                "current_step_id": None,
                "context": {"event": {"id": event["id"], "name": event["name"],
                                      "payload": json.loads(json.dumps(event["payload"]))}},
                "started_at": stamp,
                "completed_at": None,
                "failed_at": None,
                "failure_reason": None,
                "created_at": stamp,
                "updated_at": stamp,
                "_started": time.monotonic(),
            })
            self._next_run += 1
            auto["total_runs"] += 1
            auto["active_runs"] += 1
            started += 1
        return started

    @staticmethod
    def _automation_matches(auto, event):
        """Active, trigger_type "event", and trigger_config.event_name (the spec does not
        name the key: the fake's choice) equal to the event's name when it is set."""
        if auto["status"] != "active" or auto["trigger_type"] != "event":
            return False
        wanted = auto["trigger_config"].get("event_name")
        return wanted is None or wanted == event["name"]

    def _may_enter(self, auto, contact):
        """reentry_policy: always; once_per_contact; cooldown (reentry_cooldown_seconds
        since the contact's last run of this automation; never again without it)."""
        policy = auto["reentry_policy"]
        if policy == "always":
            return True
        earlier = [r for r in self.runs if r["automation_id"] == auto["id"] and r["contact_id"] == contact["id"]]
        if not earlier:
            return True
        cooldown = auto["reentry_cooldown_seconds"]
        if policy == "cooldown" and cooldown is not None:
            return time.monotonic() - earlier[-1]["_started"] >= cooldown
        return False

    # ---- automations (sendry-api.md section 9; only what an event trigger needs) -----

    @staticmethod
    def _validate_automation(body):
        """422 on a body the spec's createAutomation schema refuses."""
        if not isinstance(body, dict):
            raise ApiError(422, "body: must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_LEN:
            raise ApiError(422, f"name: is required, a string of 1-{MAX_NAME_LEN} characters")
        if "description" in body and (not isinstance(body["description"], str)
                                      or len(body["description"]) > MAX_DESCRIPTION_LEN):
            raise ApiError(422, f"description: must be a string of at most {MAX_DESCRIPTION_LEN} characters")
        if body.get("trigger_type") not in TRIGGER_TYPES:
            raise ApiError(422, f"trigger_type: is required, one of {', '.join(TRIGGER_TYPES)}")
        if "trigger_config" in body and not isinstance(body["trigger_config"], dict):
            raise ApiError(422, "trigger_config: must be an object")
        if "entry_segment_id" in body and not isinstance(body["entry_segment_id"], str):
            raise ApiError(422, "entry_segment_id: must be a string")
        if "reentry_policy" in body and body["reentry_policy"] not in REENTRY_POLICIES:
            raise ApiError(422, f"reentry_policy: must be one of {', '.join(REENTRY_POLICIES)}")
        if "reentry_cooldown_seconds" in body:
            secs = body["reentry_cooldown_seconds"]
            if isinstance(secs, bool) or not isinstance(secs, int) or secs < 1:
                raise ApiError(422, "reentry_cooldown_seconds: must be an integer of at least 1")

    def _create_automation(self, body):
        """POST /v1/automations: a draft (it starts nothing until activated)."""
        self._validate_automation(body)
        stamp = now_iso()
        auto = {
            "id": f"auto_{self._next_automation}",
            "name": body["name"],
            "description": body.get("description"),
            "status": "draft",
            "trigger_type": body["trigger_type"],
            "trigger_config": json.loads(json.dumps(body.get("trigger_config", {}))),
            "entry_segment_id": body.get("entry_segment_id"),
            "reentry_policy": body.get("reentry_policy", "once_per_contact"),
            "reentry_cooldown_seconds": body.get("reentry_cooldown_seconds"),
            "total_runs": 0,
            "active_runs": 0,
            "completed_runs": 0,
            "failed_runs": 0,
            "created_at": stamp,
            "updated_at": stamp,
        }
        self._next_automation += 1
        self.automations[auto["id"]] = auto
        return dict(auto)

    def _automation(self, aid):
        auto = self.automations.get(aid)
        if auto is None:
            raise ApiError(404, "Automation not found")
        return auto

    def _activate_automation(self, aid):
        auto = self._automation(aid)
        auto["status"] = "active"
        auto["updated_at"] = now_iso()
        return self._automation_json(auto)

    @staticmethod
    def _automation_json(auto):
        return json.loads(json.dumps(auto))

    @staticmethod
    def _run_json(run):
        return {k: v for k, v in json.loads(json.dumps(run)).items() if not k.startswith("_")}

    @staticmethod
    def _event_json(event):
        return json.loads(json.dumps(event))  # a deep copy: the answer never aliases state

    @staticmethod
    def _contact_json(contact):
        out = dict(contact)
        out["audiences"] = sorted(contact["audiences"])
        if contact["metadata"] is not None:
            out["metadata"] = dict(contact["metadata"])
        out["properties"] = {}
        return out

    @staticmethod
    def _paginate(items, query):
        raw_limit = query.get("limit", "50")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise ApiError(422, f"limit: must be an integer, got {raw_limit!r}") from None
        if not 1 <= limit <= 100:
            raise ApiError(422, f"limit: must be between 1 and 100, got {limit}")
        start = _decode_cursor(query["cursor"]) if query.get("cursor") else 0
        end = start + limit
        has_more = end < len(items)
        return {
            "data": [dict(x) for x in items[start:end]],
            "has_more": has_more,
            "next_cursor": _encode_cursor(end) if has_more else None,
        }

    # ---- control API -------------------------------------------------------

    def _down_after_answer(self, seconds):
        """/_control/down: goes down once this answer is sent (see run_after_control)."""
        seconds = float(seconds)
        if seconds <= 0:
            raise ValueError("down: seconds must be > 0 (nothing could bring it up again)")
        self._after_control.fn = lambda: self.down(seconds)
        return {"down_for": seconds}

    def run_after_control(self):
        """What a control request left to do once it was answered (this thread's)."""
        fn = getattr(self._after_control, "fn", None)
        self._after_control.fn = None
        if fn is not None:
            fn()

    def _control(self, method, path, query, raw):
        """/_control/* for shell scripts: no auth, no rate limit, not recorded."""
        name = path[len("/_control/"):].strip("/") if path.startswith("/_control/") else ""
        body, ok = _parse_json(raw)
        if not ok:
            return 400, error_body(400, message="Request body is not valid JSON")
        kwargs = body if isinstance(body, dict) else {}

        if method == "GET":
            with self._lock:
                if name == "requests":
                    if query.get("summary") in ("1", "true", "yes"):
                        return 200, [
                            {
                                "method": r["method"],
                                "path": r["path"],
                                "status": r["status"],
                                "n_contacts": _n_contacts(r["json"]),
                            }
                            for r in self.requests
                        ]
                    return 200, list(self.requests)
                if name == "contacts":
                    return 200, self.contacts_json()
                if name == "audiences":
                    return 200, {aid: self.members(aid) for aid in self.audiences}
                if name == "stats":
                    out = dict(self.stats)
                    out["requests"] = len(self.requests)
                    out["contacts"] = len(self.contacts)
                    out["events"] = len(self.events)
                    out["events_deduped"] = self.events_deduped
                    return 200, out
                if name == "automations":
                    return 200, {
                        "automations": [self._automation_json(a) for a in self.automations.values()],
                        "runs": self.runs_json(),
                    }
                if name == "events":
                    return 200, {
                        "events": self.events_json(query.get("name") or None),
                        "deduped": self.events_deduped,
                        "dedupes": dict(self.event_dedupes),
                    }
                if name == "unsubscribes":
                    return 200, list(self.unsubscribes)
                if name == "suppression":
                    return 200, list(self.suppressions)
        elif method == "POST":
            actions = {
                "reset": lambda: self.reset(),
                "fail_next": lambda: self.fail_next(**kwargs),
                "drop_next": lambda: self.drop_next(**kwargs),
                "lose_answer_next": lambda: self.lose_answer_next(**kwargs),
                "delay_next": lambda: self.delay_next(**kwargs),
                "delay_all": lambda: setattr(self, "delay_all", float(kwargs.get("seconds", 0))),
                "fail_fraction": lambda: self.fail_fraction(**kwargs),
                "down": lambda: self._down_after_answer(kwargs.get("seconds")),
                "reject_emails": lambda: self.reject_emails(kwargs.get("regex")),
                "fail_emails": lambda: self.fail_emails(kwargs.get("regex"), kwargs.get("status", 500)),
                "fail_events": lambda: self.fail_events(**kwargs),
                "set_unsubscribed": lambda: self.set_unsubscribed(
                    kwargs["email"], kwargs.get("unsubscribed", True)
                ),
                "add_unsubscribe": lambda: self.add_unsubscribe(**kwargs),
                "add_suppression": lambda: self.add_suppression(**kwargs),
                "add_audience": lambda: self.add_audience(**kwargs),
                "remove_audience": lambda: self.remove_audience(kwargs["audience_id"]),
            }
            if name in actions:
                try:
                    result = actions[name]()
                except KeyError as exc:
                    return 404, error_body(404, message=f"Not found: {exc}")
                except (TypeError, ValueError, re.error) as exc:
                    return 400, error_body(400, message=str(exc))
                return 200, result if isinstance(result, dict) else {"ok": True}
        return 404, error_body(404, message=f"Unknown control endpoint: {method} {path}")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _parse_rate(text):
    """'100/10' -> (100, 10.0)."""
    try:
        n, window = text.split("/", 1)
        return int(n), float(window)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N/SECONDS, e.g. 100/10, got {text!r}") from None


def _write_atomically(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # readers never see a partial file


def main(argv=None):
    p = argparse.ArgumentParser(description="Fake Sendry HTTP API (127.0.0.1 only).")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = ephemeral)")
    p.add_argument("--port-file", help="write the chosen port here (atomically)")
    p.add_argument("--api-key", default="sn_test_fake")
    p.add_argument("--read-only-key", default=None, help="key that may only read (writes -> 403)")
    p.add_argument("--no-events-key", default=None,
                   help="key that may write contacts but lacks the events scope (/v1/events -> 403)")
    p.add_argument("--audience-id", default="aud_test")
    p.add_argument("--extra-audience", action="append", default=[], metavar="ID",
                   help="another audience that exists (repeatable)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--rate-limit", type=_parse_rate, default=(100, 10.0), metavar="N/SECONDS")
    group.add_argument("--no-rate-limit", action="store_true")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = p.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    # Install handlers before announcing the port, so a prompt SIGTERM is clean.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    fake = FakeSendry(
        api_key=args.api_key,
        audience_id=args.audience_id,
        audiences=args.extra_audience,
        rate_limit=None if args.no_rate_limit else args.rate_limit,
        read_only_key=args.read_only_key,
        no_events_key=args.no_events_key,
        port=args.port,
        verbose=args.verbose,
    )
    fake.start()
    try:
        if args.port_file:
            _write_atomically(args.port_file, f"{fake.port}\n")
        print(f"fake-sendry listening on {fake.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
