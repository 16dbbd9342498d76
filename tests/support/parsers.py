#!/usr/bin/env python3
"""The smuggling tests' oracle: parse a byte stream as HTTP/1.1 messages
under three parsers and print what each saw, as JSON.

- h11 (PyPI `h11`, strict; what the recorder app frames requests with);
- lenient: a deliberately lenient line parser that takes a bare LF as a line
  end, strips whitespace around names and values, believes
  `Transfer-Encoding` when it merely *contains* "chunked", reads sizes and
  lengths with Python's int(), and ends trailers at the first empty line (as
  Python's http.server-based apps and other forgiving servers do);
- llhttp (PyPI `llhttp`, the binding of Node's parser; strict, no lenient
  flags).

Input (stdin): {"kind": "request" | "response", "resync": true,
                "items": [{"id": ..., "path": FILE | "hex": HEX,
                           "methods": [...], "eof": true}]}
`methods` (responses only) are the request methods the responses answer,
in order (a HEAD response has no body). `eof`: the stream ended with the
peer closing (default true).

Output (stdout): {id: {"h11"|"lenient"|"llhttp": {
    "messages": [{"method", "target" | "status", "version",
                  "headers": [[name, value]], "trailers": [[name, value]],
                  "body": HEX, "complete": bool, "interim": bool,
                  "chunks": [HEX of each raw chunk-size line] (lenient)}],
    "end": "clean" | "incomplete" | "error" | "closed",
    "error": text or null,
    "error_tag": the X-Case of the request the parser failed on, if known,
    "errors": [{"error", "index", "tag"}] (llhttp, requests: messages it
              refused and skipped, resuming where h11 says they end),
    "rest": HEX of bytes left unread ("closed": the parser stopped
            because the connection must close after the last message)}}}
"""

import json
import sys

import h11
import llhttp


def hx(b):
    return bytes(b).hex()


def lat(b):
    return bytes(b).decode("latin-1")


def message(kind):
    m = {"headers": [], "trailers": [], "body": bytearray(), "complete": False, "interim": False}
    return m


def tag_near(data, pos):
    """The X-Case of the request a parser failed on at `pos`: the one in the
    head starting there, or else the last one before it."""
    head_end = data.find(b"\r\n\r\n", pos)
    head = data[pos : head_end if head_end >= 0 else len(data)]
    i = head.find(b"X-Case: ")
    if i < 0:
        i = data.rfind(b"X-Case: ", 0, pos)
        if i < 0:
            return None
        start = i
    else:
        start = pos + i
    end = data.find(b"\r\n", start)
    return lat(data[start + 8 : end if end >= 0 else len(data)])


def finish(messages, end, error, rest):
    out = []
    for m in messages:
        m = dict(m)
        m["body"] = hx(m["body"])
        if "chunks" in m:
            m["chunks"] = [hx(c) for c in m["chunks"]]
        out.append(m)
    return {"messages": out, "end": end, "error": error, "rest": hx(rest)}


# ---- h11 --------------------------------------------------------------


def h11_parse(data, kind, methods, eof):
    role = h11.SERVER if kind == "request" else h11.CLIENT
    conn = h11.Connection(role, max_incomplete_event_size=1 << 20)
    messages = []
    cur = None
    asked = 0

    def ask():
        nonlocal asked
        method = methods[asked] if asked < len(methods) else "GET"
        asked += 1
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())

    if kind == "response":
        ask()
    conn.receive_data(data)
    fed_eof = False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if eof and not fed_eof:
                    fed_eof = True
                    conn.receive_data(b"")
                    continue
                pending = conn.trailing_data[0]
                if cur is not None or pending:
                    return finish(messages, "incomplete", None, pending)
                return finish(messages, "clean", None, b"")
            if event is h11.PAUSED:
                return finish(messages, "closed", None, conn.trailing_data[0])
            if isinstance(event, h11.ConnectionClosed):
                return finish(messages, "clean", None, b"")
            if isinstance(event, (h11.Request, h11.Response, h11.InformationalResponse)):
                cur = message(kind)
                if isinstance(event, h11.Request):
                    cur["method"] = lat(event.method)
                    cur["target"] = lat(event.target)
                else:
                    cur["status"] = event.status_code
                cur["version"] = lat(event.http_version)
                cur["headers"] = [[lat(k), lat(v)] for k, v in event.headers.raw_items()]
                messages.append(cur)
                if isinstance(event, h11.InformationalResponse):
                    cur["interim"] = True
                    cur["complete"] = True
                    cur = None
            elif isinstance(event, h11.Data):
                cur["body"] += event.data
            elif isinstance(event, h11.EndOfMessage):
                cur["complete"] = True
                cur["trailers"] = [[lat(k), lat(v)] for k, v in event.headers.raw_items()]
                cur = None
                if kind == "request":
                    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                    conn.send(h11.EndOfMessage())
                if kind == "response" and fed_eof and not conn.trailing_data[0]:
                    return finish(messages, "closed", None, b"")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return finish(messages, "closed", None, conn.trailing_data[0])
                conn.start_next_cycle()
                if kind == "response":
                    if asked >= len(methods) and not conn.trailing_data[0]:
                        return finish(messages, "clean", None, b"")
                    ask()
    except h11.RemoteProtocolError as err:
        # After the peer's EOF an error means the stream ended mid-message.
        end = "incomplete" if fed_eof else "error"
        rest = conn.trailing_data[0]
        out = finish(messages, end, str(err), rest)
        out["error_tag"] = tag_near(data, len(data) - len(rest))
        return out
    except h11.LocalProtocolError as err:
        return finish(messages, "error", f"local: {err}", conn.trailing_data[0])


# ---- lenient ----------------------------------------------------------


class Incomplete(Exception):
    pass


class Bad(Exception):
    pass


def lenient_parse(data, kind, methods, eof):
    pos = 0
    messages = []
    answered = 0

    def line():
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise Incomplete()
        got = data[pos:end]
        pos = end + 1
        return got[:-1] if got.endswith(b"\r") else got

    def fields(into):
        while True:
            text = line()
            if not text.strip():
                return
            if text[:1] in (b" ", b"\t") and into:
                into[-1][1] += " " + lat(text.strip())
                continue
            name, sep, value = text.partition(b":")
            if not sep:
                raise Bad(f"header line without a colon: {text!r}")
            into.append([lat(name.strip()), lat(value.strip())])

    def get(headers, name):
        return [v for k, v in headers if k.lower() == name]

    while pos < len(data):
        start = pos
        m = message(kind)
        try:
            first = line()
            parts = first.split()
            if len(parts) < 2:
                raise Bad(f"bad start line {first!r}")
            if kind == "request":
                m["method"], m["target"] = lat(parts[0]), lat(parts[1])
                m["version"] = lat(parts[2]) if len(parts) > 2 else ""
            else:
                m["version"] = lat(parts[0])
                try:
                    m["status"] = int(parts[1])
                except ValueError:
                    raise Bad(f"bad status {parts[1]!r}") from None
            messages.append(m)
            fields(m["headers"])
            te = " ".join(get(m["headers"], "transfer-encoding")).lower()
            cl = get(m["headers"], "content-length")
            status = m.get("status", 200)
            method = methods[answered] if answered < len(methods) else "GET"
            if kind == "response" and 100 <= status < 200:
                m["interim"] = True
                m["complete"] = True
                continue
            if kind == "response":
                answered += 1
            if kind == "response" and (method == "HEAD" or status in (204, 304)):
                pass
            elif "chunked" in te:
                m["chunks"] = []
                while True:
                    size_line = line()
                    m["chunks"].append(size_line)
                    try:
                        size = int(size_line.split(b";")[0].strip(), 16)
                    except ValueError:
                        raise Bad(f"bad chunk size {size_line!r}") from None
                    if size < 0:
                        raise Bad(f"negative chunk size {size_line!r}")
                    if size == 0:
                        fields(m["trailers"])
                        break
                    if pos + size > len(data):
                        raise Incomplete()
                    m["body"] += data[pos : pos + size]
                    pos += size
                    line()
            elif cl:
                try:
                    n = int(cl[0])
                except ValueError:
                    raise Bad(f"bad Content-Length {cl[0]!r}") from None
                if n < 0:
                    raise Bad(f"negative Content-Length {cl[0]!r}")
                if pos + n > len(data):
                    raise Incomplete()
                m["body"] += data[pos : pos + n]
                pos += n
            elif kind == "response":
                m["body"] += data[pos:]
                pos = len(data)
                if not eof:
                    raise Incomplete()
            m["complete"] = True
        except Incomplete:
            return finish(messages, "incomplete", None, data[start:])
        except Bad as err:
            out = finish(messages, "error", str(err), data[start:])
            out["error_tag"] = tag_near(data, start)
            return out
    return finish(messages, "clean", None, b"")


# ---- llhttp -----------------------------------------------------------


def h11_boundaries(data):
    """Where each request ends in `data`, as h11 frames it (to resume another
    parser past a message it refused), and each request's X-Case."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    ends, tags = [], []
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                tags.append(next((lat(v) for k, v in ev.headers if k == b"x-case"), None))
            elif isinstance(ev, h11.EndOfMessage):
                ends.append(len(data) - len(conn.trailing_data[0]))
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
            elif ev in (h11.NEED_DATA, h11.PAUSED) or isinstance(ev, h11.ConnectionClosed):
                break
    except h11.ProtocolError:
        pass
    return ends, tags


def llhttp_parse(data, kind, methods, eof):
    messages = []
    errors = []
    state = {"cur": None, "field": None, "in_trailers": False, "answered": 0, "pause_head": False,
             "last_tag": None}
    base = llhttp.Request if kind == "request" else llhttp.Response

    class Parser(base):
        def on_message_begin(self):
            m = message(kind)
            # The X-Case of the request before this one in the stream,
            # refused ones included (to place an untagged request).
            m["after"] = state["last_tag"]
            messages.append(m)
            state["cur"] = m
            state["in_trailers"] = False
            state["field"] = None
            m["_url"] = bytearray()

        def on_url(self, b):
            state["cur"]["_url"] += bytes(b)

        def on_header_field(self, b):
            m = state["cur"]
            into = m["trailers"] if state["in_trailers"] else m["headers"]
            if state["field"] != "name":
                into.append([bytearray(), bytearray()])
            into[-1][0] += bytes(b)
            state["field"] = "name"

        def on_header_value(self, b):
            m = state["cur"]
            into = m["trailers"] if state["in_trailers"] else m["headers"]
            into[-1][1] += bytes(b)
            state["field"] = "value"

        def on_headers_complete(self):
            m = state["cur"]
            if kind == "request":
                m["method"] = self.method
                m["target"] = lat(m["_url"])
            else:
                m["status"] = self.status
                if 100 <= self.status < 200:
                    m["interim"] = True
                else:
                    method = methods[state["answered"]] if state["answered"] < len(methods) else "GET"
                    state["answered"] += 1
                    if method == "HEAD":
                        # pyllhttp cannot return "skip body": pause here and
                        # go on with a fresh parser after the head.
                        state["pause_head"] = True
                        self.pause()
            m["version"] = f"HTTP/{self.major}.{self.minor}"
            for k, v in m["headers"]:
                if bytes(k).lower() == b"x-case":
                    state["last_tag"] = lat(v)
            state["in_trailers"] = True
            state["field"] = None

        def on_body(self, b):
            state["cur"]["body"] += bytes(b)

        def on_message_complete(self):
            state["cur"]["complete"] = True
            state["cur"] = None

    def tidy():
        for m in messages:
            m.pop("_url", None)
            for key in ("headers", "trailers"):
                m[key] = [[lat(k), lat(v)] for k, v in m[key]]

    boundaries = None
    skipped = 0  # requests refused and skipped (h11 counts them)
    pos = 0
    parser = Parser()
    while True:
        try:
            n = parser.execute(data[pos:])
        except llhttp.Error as err:
            text = f"{type(err).__name__}: {err}"
            # The message it refused: drop what was parsed of it, and go on
            # after it where h11 says it ends (requests only), so one refusal
            # does not hide everything behind it.
            index = skipped + (len(messages) - 1 if state["cur"] is not None else len(messages))
            if state["cur"] is not None:
                messages.pop()
                state["cur"] = None
            skipped += 1
            if kind != "request":
                tidy()
                return finish(messages, "error", text, data[pos:])
            if not RESYNC:
                tidy()
                return finish(messages, "error", text, data[pos:])
            if boundaries is None:
                boundaries = h11_boundaries(data)
            ends, tags = boundaries
            errors.append({"error": text, "index": index,
                           "tag": tags[index] if index < len(tags) else None})
            state["last_tag"] = errors[-1]["tag"]
            if index < len(ends) and ends[index] > pos:
                pos = ends[index]
                parser = Parser()
                if pos < len(data):
                    continue
                break
            tidy()
            out = finish(messages, "error", text, data[pos:])
            out["errors"] = errors
            return out
        if state["pause_head"]:
            state["pause_head"] = False
            state["cur"]["complete"] = True
            state["cur"] = None
            pos += n
            parser = Parser()
            continue
        break
    end, error = "clean", None
    if eof and state["cur"] is not None:
        try:
            parser.finish()
        except llhttp.Error as err:
            end, error = "incomplete", f"{type(err).__name__}: {err}"
    if state["cur"] is not None:
        end = "incomplete"
    tidy()
    out = finish(messages, end, error, b"")
    out["errors"] = errors
    return out


RESYNC = True

PARSERS = {"h11": h11_parse, "lenient": lenient_parse, "llhttp": llhttp_parse}


def main():
    global RESYNC
    job = json.load(sys.stdin)
    kind = job["kind"]
    RESYNC = job.get("resync", True)
    out = {}
    for item in job["items"]:
        if "path" in item:
            with open(item["path"], "rb") as f:
                data = f.read()
        else:
            data = bytes.fromhex(item["hex"])
        methods = item.get("methods", [])
        eof = item.get("eof", True)
        out[item["id"]] = {
            name: parse(data, kind, methods, eof) for name, parse in PARSERS.items()
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
