#!/usr/bin/env python3
"""Converts the framing-related cases of h11's own test suite (the PyPI sdist
h11-0.16.0.tar.gz, see SOURCE) into tests/corpus/h11/cases.json, once.

    python3 -m pip download --no-deps --no-binary :all: h11==0.16.0 -d /tmp/h11
    python3 tests/corpus/h11/convert.py /tmp/h11/h11-0.16.0.tar.gz

It contains none of h11's code: it reads h11's test files (h11/tests/
test_io.py, test_connection.py, test_headers.py) with Python's `ast`,
takes the byte strings they feed to h11's readers (and the header lists
they validate), wraps body-only and header-only cases into whole requests,
runs each through the installed h11 (via tests/support/parsers.py) to
record what h11 does with those exact wire bytes, and writes the cases
with the load balancer's expected decision. That decision defaults to
h11's verdict on the wire bytes; where the LB's spec (tests/corpus/README.md)
differs, an entry in OVERRIDES below says what the LB must do and why.
"""

import ast
import hashlib
import io
import json
import os
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "support"))
import parsers  # noqa: E402  (ours: the three-parser oracle)

SDIST_SHA256 = "4e35b956cf45792e4caa5885e69fba00bdbc6ffafbfa020300e549b208ee5ff1"
FILES = ["test_io.py", "test_connection.py", "test_headers.py"]


class NotConstant(Exception):
    pass


def const(node):
    """Evaluates a constant bytes/str/int expression (literals, +, *)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = const(node.left), const(node.right)
        return left + right if isinstance(node.op, ast.Add) else left * right
    if isinstance(node, (ast.Tuple, ast.List)):
        return [const(e) for e in node.elts]
    raise NotConstant(ast.dump(node)[:80])


def as_bytes(v):
    return v if isinstance(v, bytes) else v.encode("latin-1")


def inside_raises(node, parents):
    p = parents.get(node)
    while p is not None:
        if isinstance(p, ast.With):
            for item in p.items:
                call = item.context_expr
                if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "raises":
                    return True
        p = parents.get(p)
    return False


def function_of(node, parents):
    p = parents.get(node)
    while p is not None and not isinstance(p, ast.FunctionDef):
        p = parents.get(p)
    return p.name if p is not None else "<module>"


def names_in(node):
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def extract(name, source):
    """Yields raw cases: dict(fn, line, kind, data | pieces | fields, h11_test)."""
    tree = ast.parse(source)
    parents = {}
    for p in ast.walk(tree):
        for c in ast.iter_child_nodes(p):
            parents[c] = p

    for node in ast.walk(tree):
        # SIMPLE_CASES = [((ROLE, STATE), Event, bytes), ...]
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "SIMPLE_CASES" for t in node.targets
        ):
            for elt in node.value.elts:
                role = elt.elts[0].elts[0].id
                data = const(elt.elts[2])
                yield dict(fn="SIMPLE_CASES", line=elt.lineno,
                           kind="request" if role == "CLIENT" else "response",
                           data=data, h11_test="accept")
        if not isinstance(node, ast.Call):
            continue
        fname = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        fn = function_of(node, parents)
        if fname == "tr" and len(node.args) == 3:
            reader = node.args[0]
            try:
                data = const(node.args[1])
            except NotConstant:
                continue
            role = reader.slice.elts[0].id if isinstance(reader, ast.Subscript) else None
            expected = node.args[2]
            reject = isinstance(expected, ast.Constant) and expected.value is None
            yield dict(fn=fn, line=node.lineno,
                       kind="request" if role == "CLIENT" else "response",
                       data=data, h11_test="reject" if reject else "accept")
        elif fname == "t_body_reader":
            thunk = node.args[0]
            try:
                data = const(node.args[1])
            except NotConstant:
                continue
            reject = "LocalProtocolError" in names_in(node.args[2])
            if isinstance(thunk, ast.Name) and thunk.id == "ChunkedReader":
                yield dict(fn=fn, line=node.lineno, kind="request", body="chunked",
                           data=data, h11_test="reject" if reject else "accept")
            elif isinstance(thunk, ast.Lambda) and getattr(thunk.body.func, "id", "") == "ContentLengthReader":
                n = const(thunk.body.args[0])
                yield dict(fn=fn, line=node.lineno, kind="request", body=("length", n),
                           data=data, h11_test="reject" if reject else "accept")
        elif fname == "normalize_and_validate" and node.args:
            try:
                fields = const(node.args[0])
            except NotConstant:
                continue
            yield dict(fn=fn, line=node.lineno, kind="request", fields=fields,
                       h11_test="reject" if inside_raises(node, parents) else "accept")

    # test_reject_non_vchar_in_path: a loop over bad bytes spliced into a
    # request line.
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "test_reject_non_vchar_in_path":
            loop = node.body[0]
            bad = const(loop.iter)
            consts = [const(n) for n in ast.walk(loop) if isinstance(n, ast.Constant) and isinstance(n.value, bytes)]
            prefix, suffix = consts[1], consts[2]
            for b in bad:
                yield dict(fn=node.name, line=loop.lineno, kind="request",
                           data=prefix + bytes([b]) + suffix, h11_test="reject", suffix=f"{b:02x}")

    # Parametrized early-detection tests: each parameter is a whole input.
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_early_detection"):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize":
                    for i, v in enumerate(const(dec.args[1])):
                        yield dict(fn=node.name, line=node.lineno,
                                   kind="request" if node.name.endswith("request") else "response",
                                   data=v, h11_test="reject", eof=True, suffix=str(i))

    # test_connection.py: the bytes a Connection of a known role receives,
    # per connection object, in order.
    if name == "test_connection.py":
        for fdef in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
            if fdef.name.startswith("test_early_detection"):
                continue
            groups = []
            current = None
            env = {}  # local names bound to constant byte strings
            for stmt in walk_in_order(fdef):
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and \
                        isinstance(stmt.targets[0], ast.Name):
                    try:
                        value = const(stmt.value)
                        if isinstance(value, bytes):
                            env[stmt.targets[0].id] = value
                    except NotConstant:
                        pass
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call) and \
                        getattr(stmt.value.func, "id", "") == "Connection":
                    role = role_of(stmt.value)
                    current = dict(role=role, pieces=[], line=stmt.lineno, raises=False)
                    groups.append(current)
                elif isinstance(stmt, ast.Call) and current is not None:
                    fname = getattr(stmt.func, "attr", None) or getattr(stmt.func, "id", None)
                    arg = None
                    if fname == "receive_data" and stmt.args:
                        arg = stmt.args[0]
                    elif fname == "receive_and_get" and len(stmt.args) == 2:
                        arg = stmt.args[1]
                    if arg is not None:
                        if isinstance(arg, ast.Name) and arg.id in env:
                            current["pieces"].append(env[arg.id])
                            continue
                        try:
                            current["pieces"].append(const(arg))
                        except NotConstant:
                            current["pieces"].append(None)
            for g in groups:
                pieces = g["pieces"]
                if not pieces or pieces[0] in (None, b""):
                    continue
                roles = ["request", "response"] if g["role"] is None else [g["role"]]
                for kind in roles:
                    yield dict(fn=fdef.name, line=g["line"], kind=kind, pieces=pieces,
                               h11_test=None)


def walk_in_order(node):
    """Every node under `node`, depth first, in source order."""
    for child in ast.iter_child_nodes(node):
        yield child
        yield from walk_in_order(child)


def role_of(call):
    args = list(call.args) + [k.value for k in call.keywords if k.arg == "our_role"]
    for a in args:
        if isinstance(a, ast.Name) and a.id == "SERVER":
            return "request"  # a server reads requests
        if isinstance(a, ast.Name) and a.id == "CLIENT":
            return "response"
    return None


def wire(raw):
    """The whole bytes a case sends, and the tag-able pieces."""
    if raw.get("body") == "chunked":
        head = b"POST /h11 HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        return head + raw["data"], False
    if isinstance(raw.get("body"), tuple):
        n = raw["body"][1]
        head = f"POST /h11 HTTP/1.1\r\nHost: example.com\r\nContent-Length: {n}\r\n\r\n".encode()
        return head + raw["data"], False
    if "fields" in raw:
        lines = [b"POST /h11 HTTP/1.1", b"Host: example.com"]
        body = b""
        for name, value in raw["fields"]:
            lines.append(as_bytes(name) + b": " + as_bytes(value))
        text = b"\r\n".join(lines) + b"\r\n\r\n"
        return text, False
    if "pieces" in raw:
        # The longest run of pieces h11 can finish without more input, or
        # else the longest one the peer ended with EOF (b"").
        pieces = []
        for p in raw["pieces"]:
            if p is None:
                break
            pieces.append(p)
        best = None
        for k in range(len(pieces), 0, -1):
            data = b"".join(pieces[:k])
            if not data:
                continue
            eof = k < len(pieces) and pieces[k] == b""
            end = parsers.h11_parse(data, raw["kind"], ["GET"] * 8, False)["end"]
            if end != "incomplete":
                return data, False
            if eof and best is None:
                best = (data, True)
        return best or (b"", False)
    return raw["data"], raw.get("eof", False) or raw["kind"] == "response"


def add_bodies(raw, data):
    """normalize_and_validate cases declare a Content-Length or chunked:
    give the request the body it declares (h11's verdict decides)."""
    if "fields" not in raw:
        return data
    result = parsers.h11_parse(data, "request", [], False)
    if result["end"] == "incomplete" and result["messages"]:
        for name, value in raw["fields"]:
            if as_bytes(name).lower() == b"content-length":
                try:
                    n = int(as_bytes(value).split(b",")[0])
                except ValueError:
                    return data
                return data + b"x" * n
            if as_bytes(name).lower() == b"transfer-encoding":
                return data + b"0\r\n\r\n"
    return data


def split_requests(data):
    """The pieces of a pipelined stream, one request each (by h11)."""
    import h11

    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    pieces = []
    start = 0
    try:
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.EndOfMessage):
                left = len(conn.trailing_data[0])
                end = len(data) - left
                pieces.append(data[start:end])
                start = end
                conn.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
            elif ev in (h11.NEED_DATA, h11.PAUSED):
                break
    except h11.RemoteProtocolError:
        pass
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def text(b):
    return b.decode("latin-1")


def header(msg, name):
    return [v for k, v in msg["headers"] if k.lower() == name]


def main():
    path = sys.argv[1]
    blob = open(path, "rb").read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SDIST_SHA256:
        sys.exit(f"{path}: sha256 {digest}, expected {SDIST_SHA256}")
    tar = tarfile.open(fileobj=io.BytesIO(blob))
    cases = []
    seen = set()
    for fname in FILES:
        source = tar.extractfile(f"h11-0.16.0/h11/tests/{fname}").read().decode()
        counts = {}
        for raw in extract(fname, source):
            data, eof = wire(raw)
            data = add_bodies(raw, data)
            if not data:
                continue
            kind = raw["kind"]
            key = (kind, data, eof)
            if key in seen:
                continue
            seen.add(key)
            stem = f"{fname[:-3]}.{raw['fn']}"
            counts[stem] = counts.get(stem, 0) + 1
            name = f"h11.{stem}.{counts[stem]}"
            result = parsers.h11_parse(data, kind, ["GET"], eof)
            if result["end"] == "incomplete" and not eof:
                continue  # h11 waits for more: not a case a peer can finish
            msgs = [m for m in result["messages"] if not m["interim"]]
            if result["end"] == "error":
                verdict = "reject"
            elif result["end"] == "incomplete":
                verdict = "incomplete"
            else:
                verdict = "accept"
            case = {
                "name": name,
                "kind": kind,
                "origin": f"h11/tests/{fname}:{raw['line']} ({raw['fn']})",
                "h11_test": raw["h11_test"] or verdict,
                "h11_wire": verdict,
            }
            if result["end"] == "error":
                case["h11_error"] = result["error"]
            if kind == "request":
                pieces = split_requests(data) if verdict == "accept" and len(msgs) > 1 else [data]
                case["bytes"] = [text(p) for p in pieces] if len(pieces) > 1 else text(data)
                if eof:
                    case["eof"] = True
                lines = data.split(b"\n")
                if len(lines) > 1 and lines[1][:1] in (b" ", b"\t"):
                    case["tag"] = False
                if verdict == "accept":
                    case["expect"] = "forward"
                    case["requests"] = []
                    for m in msgs:
                        req = {"method": m["method"], "target": m["target"],
                               "body": text(bytes.fromhex(m["body"]))}
                        if m["version"] == "1.0" and not header(m, "host"):
                            # The spec: HTTP/1.0 without Host is forwarded
                            # with the address the client connected to.
                            req["headers"] = {"host": "127.0.0.1:{port}"}
                            case["why"] = ("HTTP/1.0 without Host: forwarded, with the Host the LB "
                                           "supplies (the address the client connected to)")
                        case["requests"].append(req)
                    if result["end"] == "closed" or any(m["version"] == "1.0" for m in msgs):
                        case["closes"] = True
                else:
                    case["expect"] = "refuse"
                    case["status"] = 400 if not eof else [400, 0]
            else:
                case["bytes"] = text(data)
                case["close"] = True
                if verdict == "accept" and msgs:
                    m = msgs[0]
                    case["expect"] = "forward"
                    case["status"] = m["status"]
                    case["body"] = text(bytes.fromhex(m["body"]))
                else:
                    case["expect"] = "refuse"
                    case["status"] = 502
            over = OVERRIDES.get(name)
            if over is not None:
                case.update(over)
            case.setdefault("why", WHY_DEFAULT[case["expect"]])
            cases.append(case)
    unused = set(OVERRIDES) - {c["name"] for c in cases}
    if unused:
        sys.exit(f"overrides for cases that do not exist: {sorted(unused)}")
    out = {
        "source": f"h11 0.16.0 sdist from PyPI (sha256 {digest}), h11/tests/{{{','.join(FILES)}}}",
        "license": "MIT (LICENSE.txt beside this file)",
        "escaping": "JSON strings; every character is U+0000..U+00FF and stands for one byte (see tests/corpus/README.md)",
        "generated_by": "tests/corpus/h11/convert.py",
        "cases": cases,
    }
    with open(os.path.join(HERE, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(cases)} cases", file=sys.stderr)


WHY_DEFAULT = {
    "forward": "h11 accepts these wire bytes and so does the LB's spec",
    "refuse": "h11 refuses these wire bytes and so does the LB's spec",
    "either": "the LB's spec does not decide; either answer is safe",
}

# Where the LB's spec (tests/corpus/README.md) decides otherwise than h11
# does on the same wire bytes. Filled in by reading the generated cases.
OBS_FOLD = ("obs-fold in a request head: RFC 9112 §5.2 lets a server reject it or unfold "
            "it; the LB refuses (h11 unfolds, so the two would disagree on the field)")
OWS = ("h11's header *API* refuses a value with surrounding whitespace, but on the wire "
       "that whitespace is OWS around the value and is dropped: forwarded")
SILENT = ("the spec does not decide (httparse refuses it, h11 accepts it); refusing and "
          "forwarding are both safe as long as the app sees exactly this request")
EITHER_RESPONSE = ("a response head the spec does not decide on; the LB rewrites response "
                   "heads, so a 502 or the forwarded response are both safe")
OVERRIDES = {
    "h11.test_io.SIMPLE_CASES.4": {"why": "a 101 to a request that asked for no upgrade: the LB never switches protocols (502)"},
    "h11.test_io.SIMPLE_CASES.5": {"why": "a 101 to a request that asked for no upgrade: the LB never switches protocols (502)"},
    "h11.test_io.test_readers_unusual.7": {"expect": "either", "status": 200, "body": "", "why": EITHER_RESPONSE + " (no SP after the status code)"},
    "h11.test_io.test_readers_unusual.8": {"expect": "either", "status": 200, "body": "", "why": EITHER_RESPONSE + " (bare LF)"},
    "h11.test_io.test_readers_unusual.9": {"expect": "either", "status": 200, "body": "", "why": EITHER_RESPONSE + " (bare LF)"},
    "h11.test_io.test_readers_unusual.10": {"expect": "either", "status": 200, "body": "", "why": EITHER_RESPONSE + " (bare LF)"},
    "h11.test_io.test_readers_unusual.11": {"expect": "refuse", "status": 400, "why": OBS_FOLD},
    "h11.test_io.test_ChunkedReader.9": {"expect": "refuse", "status": 400,
        "why": "whitespace after a chunk size with no ';' is not in RFC 9112 §7.1.1 (BWS is only allowed before ';'); h11 accepts it, the spec refuses"},
    "h11.test_io.test_allow_some_garbage_in_cookies.1": {"expect": "either", "status": 400, "why": SILENT + " (a control character in a field value)"},
    "h11.test_io.test_reject_non_vchar_in_path.4": {"expect": "either", "status": 400,
        "requests": [{"method": "HEAD", "target": "/\u00ee", "body": ""}], "why": SILENT.replace("httparse refuses it, h11 accepts it", "h11 refuses it") + " (a byte over 0x7f in the target)"},
    "h11.test_connection.test_empty_request.1": {"expect": "either", "status": 400, "requests": [],
        "why": "RFC 9112 §2.2: a server SHOULD ignore at least one empty line before a request line (h11 refuses it): refused, or ignored (then nothing is answered and a request after it is served)"},
    "h11.test_io.test_host_comes_first.1": {"why": "two Host fields: 400 (h11's test is about its writer; on the wire h11 refuses it too)"},
    "h11.test_headers.test_normalize_and_validate.3": {"expect": "refuse", "status": 400, "tag": False, "why": OBS_FOLD},
    "h11.test_headers.test_normalize_and_validate.11": {"why": OWS},
    "h11.test_headers.test_normalize_and_validate.12": {"why": OWS},
    "h11.test_headers.test_normalize_and_validate.13": {"why": OWS},
    "h11.test_headers.test_normalize_and_validate.14": {"why": OWS},
    "h11.test_headers.test_normalize_and_validate.19": {
        "requests": [{"method": "POST", "target": "/h11", "body": "", "headers": {"content-length": "0"}}],
        "why": "identical repeated Content-Length values are one length, forwarded as one field"},
    "h11.test_headers.test_normalize_and_validate.20": {
        "requests": [{"method": "POST", "target": "/h11", "body": "", "headers": {"content-length": "0"}}],
        "why": "identical repeated Content-Length values are one length, forwarded as one field"},
    "h11.test_headers.test_normalize_and_validate.23": {"status": [400, 413], "why": "a Content-Length past 2^64: refused"},
    "h11.test_headers.test_normalize_and_validate.25": {"status": 501, "why": "a transfer coding other than chunked: 501 (h11 hints 501 too)"},
    "h11.test_headers.test_normalize_and_validate.26": {"status": 501, "why": "two Transfer-Encoding fields, one of them gzip: 501 (h11 hints 501 too)"},
}


if __name__ == "__main__":
    main()
