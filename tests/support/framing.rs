//! The request-smuggling harness: framing corpora as data
//! (`tests/corpus/`), raw exchanges with the real binary in front of the
//! recording app (`tests/apps/recorder`), and the oracle — what the app
//! received, parsed under h11, a lenient LF-tolerant parser and llhttp
//! (`tests/support/parsers.py`), must be exactly the requests the clients
//! sent, and every answer must reach the client whose request it answers.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{repo, Server, Start};

/// How long one exchange may take before the client gives up on an answer.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(2500);
/// Clients sending cases at once.
pub const CLIENTS: usize = 6;

/// The recorder command app.
pub fn recorder() -> String {
    repo().join("tests/apps/recorder").display().to_string()
}

/// The misbehaving-response command app.
pub fn responder() -> String {
    repo().join("tests/apps/responder").display().to_string()
}

pub fn corpus_path(name: &str) -> PathBuf {
    repo().join("tests/corpus").join(name)
}

/// Decodes a corpus byte string: every character is one byte (U+0000..U+00FF).
pub fn bytes_of(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or_else(|_| panic!("{c:?} is not a byte")))
        .collect()
}

/// Bytes for a message: printable ASCII as is, the rest escaped.
pub fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Refuse,
    Forward,
    Either,
}

/// What the app must see of one forwarded request.
#[derive(Debug, Clone, Default)]
pub struct Want {
    pub method: String,
    pub target: String,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub absent: Vec<String>,
    pub trailers: Vec<(String, String)>,
    pub trailers_absent: Vec<String>,
}

/// A request case of a corpus.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub pieces: Vec<Vec<u8>>,
    pub expect: Expect,
    /// Acceptable refusal statuses (0: closed without an answer).
    pub statuses: Vec<u16>,
    pub requests: Vec<Want>,
    pub closes: bool,
    pub interim: Option<usize>,
    pub flags: Vec<String>,
    pub eof: bool,
    pub tag: bool,
    /// Parsers whose refusal of the forwarded request is tolerated (their
    /// own limits, not a framing fault: llhttp knows a fixed set of methods).
    pub parsers_may_refuse: Vec<String>,
    pub why: String,
}

/// A response case (the responder app writes `bytes` raw).
#[derive(Debug, Clone)]
pub struct ResponseCase {
    pub name: String,
    pub method: String,
    pub expect: Expect,
    pub status: u16,
    pub body: Vec<u8>,
    pub cut_ok: bool,
    pub trailers_absent: Vec<String>,
    pub why: String,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn expect_of(v: &Value, name: &str) -> Expect {
    match v["expect"].as_str() {
        Some("refuse") => Expect::Refuse,
        Some("forward") => Expect::Forward,
        Some("either") => Expect::Either,
        other => panic!("case {name}: bad expect {other:?}"),
    }
}

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    doc["cases"].as_array().expect("cases").clone()
}

/// The request cases of a corpus file.
pub fn request_cases(path: &Path) -> Vec<Case> {
    load(path)
        .iter()
        .filter(|c| c["kind"].as_str().unwrap_or("request") == "request")
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            let pieces = match &c["bytes"] {
                Value::String(s) => vec![bytes_of(s)],
                Value::Array(a) => a
                    .iter()
                    .map(|p| bytes_of(p.as_str().expect("piece")))
                    .collect(),
                other => panic!("case {name}: bad bytes {other}"),
            };
            let statuses = match &c["status"] {
                Value::Number(n) => vec![n.as_u64().expect("status") as u16],
                Value::Array(a) => a
                    .iter()
                    .map(|n| n.as_u64().expect("status") as u16)
                    .collect(),
                _ => vec![],
            };
            let wants: Vec<Value> = if let Some(a) = c["requests"].as_array() {
                a.clone()
            } else if c["request"].is_object() {
                vec![c["request"].clone()]
            } else {
                vec![]
            };
            let requests = wants
                .iter()
                .map(|w| Want {
                    method: w["method"].as_str().expect("method").to_string(),
                    target: w["target"].as_str().expect("target").to_string(),
                    body: bytes_of(w["body"].as_str().unwrap_or("")),
                    headers: pairs(&w["headers"]),
                    absent: strings(&w["absent"]),
                    trailers: pairs(&w["trailers"]),
                    trailers_absent: strings(&w["trailers_absent"]),
                })
                .collect();
            let expect = expect_of(c, &name);
            assert!(
                expect == Expect::Refuse
                    || !matches!(&c["requests"], Value::Null)
                    || c["request"].is_object(),
                "case {name}: a forward case names its requests"
            );
            Case {
                name,
                pieces,
                expect,
                statuses,
                requests,
                closes: c["closes"].as_bool().unwrap_or(false),
                interim: c["interim"].as_u64().map(|n| n as usize),
                flags: strings(&c["flags"]),
                eof: c["eof"].as_bool().unwrap_or(false),
                tag: c["tag"].as_bool().unwrap_or(true),
                parsers_may_refuse: strings(&c["parsers_may_refuse"]),
                why: c["why"].as_str().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// The response cases of a corpus file.
pub fn response_cases(path: &Path) -> Vec<ResponseCase> {
    load(path)
        .iter()
        .filter(|c| c["kind"].as_str().unwrap_or("response") == "response")
        .map(|c| {
            let name = c["name"].as_str().expect("name").to_string();
            ResponseCase {
                method: c["method"].as_str().unwrap_or("GET").to_string(),
                expect: expect_of(c, &name),
                status: c["status"].as_u64().unwrap_or(200) as u16,
                body: bytes_of(c["body"].as_str().unwrap_or("")),
                cut_ok: c["cut_ok"].as_bool().unwrap_or(false),
                trailers_absent: strings(&c["trailers_absent"]),
                why: c["why"].as_str().unwrap_or("").to_string(),
                name,
            }
        })
        .collect()
}

/// How a case is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Alone on a fresh connection.
    Alone,
    /// Followed on the same connection (same write) by `GET /canary`.
    Canary,
    /// Pipelined behind `GET /first`, and followed by the canary.
    Behind,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Alone, Mode::Canary, Mode::Behind];

    fn label(self) -> &'static str {
        match self {
            Mode::Alone => "alone",
            Mode::Canary => "canary",
            Mode::Behind => "behind",
        }
    }
}

fn piece_tag(case: &str, mode: Mode, i: usize) -> String {
    format!("{case}@{}#{i}", mode.label())
}

fn canary_tag(case: &str, mode: Mode) -> String {
    format!("{case}@{}/canary", mode.label())
}

fn first_tag(case: &str, mode: Mode) -> String {
    format!("{case}@{}/first", mode.label())
}

/// `X-Case: <tag>` inserted after the first line ending that follows a
/// non-empty line (the request line, past any leading empty lines).
pub fn tagged(piece: &[u8], tag: &str) -> Vec<u8> {
    let mut start = 0;
    for (i, &b) in piece.iter().enumerate() {
        if b == b'\n' {
            let line = &piece[start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.is_empty() {
                let mut out = piece[..=i].to_vec();
                out.extend_from_slice(format!("X-Case: {tag}\r\n").as_bytes());
                out.extend_from_slice(&piece[i + 1..]);
                return out;
            }
            start = i + 1;
        }
    }
    piece.to_vec()
}

fn plain_request(target: &str, tag: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: a\r\nX-Case: {tag}\r\n\r\n").into_bytes()
}

/// One answer as the client read it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub interim: usize,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What came back on a raw client connection.
#[derive(Debug)]
pub enum Read1 {
    Answer(Answer),
    /// The server closed the connection (before anything of an answer).
    Closed,
    /// Nothing (more) within the deadline.
    Timeout,
    /// Bytes that are no answer, or an answer cut short by a close.
    Broken(String),
}

/// A raw client connection with a deadline.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    deadline: Instant,
    /// Everything received, for the record.
    pub received: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16, timeout: Duration) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
            eof: false,
            deadline: Instant::now() + timeout,
            received: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // A server that refuses early may close before it read everything.
        let _ = self.stream.write_all(bytes);
    }

    pub fn half_close(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more; false on EOF or the deadline.
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let _ = self
            .stream
            .set_read_timeout(Some((self.deadline - now).max(Duration::from_millis(1))));
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.received.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                false
            }
            Err(_) => {
                self.eof = true;
                false
            }
        }
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    fn ended(&self) -> Read1 {
        if self.eof {
            Read1::Closed
        } else {
            Read1::Timeout
        }
    }

    /// Waits for the server to close the connection: true when it did.
    pub fn closes(&mut self) -> bool {
        while self.buf.is_empty() && self.fill() {}
        self.eof && self.buf.is_empty()
    }

    /// Whether nothing at all has been received yet.
    pub fn nothing_yet(&self) -> bool {
        self.received.is_empty()
    }

    /// Reads one final answer (skipping and counting 1xx interim ones).
    pub fn answer(&mut self, head_only: bool) -> Read1 {
        let mut interim = 0;
        loop {
            if self.buf.is_empty() && !self.fill() {
                return self.ended();
            }
            let Some(status_line) = self.line() else {
                return Read1::Broken(format!("a cut status line: {}", show(&self.buf)));
            };
            let text = String::from_utf8_lossy(&status_line).into_owned();
            let status = match text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|r| r.get(..3))
                .and_then(|s| s.parse::<u16>().ok())
            {
                Some(s) => s,
                None => return Read1::Broken(format!("a bad status line: {}", show(&status_line))),
            };
            let mut headers = Vec::new();
            loop {
                let Some(line) = self.line() else {
                    return Read1::Broken("a cut head".into());
                };
                if line.is_empty() {
                    break;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                let Some((k, v)) = text.split_once(':') else {
                    return Read1::Broken(format!("a bad header line: {}", show(&line)));
                };
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            if (100..200).contains(&status) {
                interim += 1;
                continue;
            }
            let mut answer = Answer {
                status,
                interim,
                headers,
                body: Vec::new(),
            };
            // An error answer (the LB's own refusals) carries its body even
            // to a HEAD.
            if (head_only && status < 400) || status == 204 || status == 304 {
                return Read1::Answer(answer);
            }
            if let Some(len) = answer.header("content-length") {
                let Ok(len) = len.parse::<usize>() else {
                    return Read1::Broken(format!("a bad content-length {len:?}"));
                };
                match self.exact(len) {
                    Some(body) => answer.body = body,
                    None => return Read1::Broken(format!("a body cut short (of {len})")),
                }
            } else if answer
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                loop {
                    let Some(size) = self.line() else {
                        return Read1::Broken("a chunked body cut short".into());
                    };
                    let Ok(size) = usize::from_str_radix(&String::from_utf8_lossy(&size), 16)
                    else {
                        return Read1::Broken(format!("a bad chunk line {}", show(&size)));
                    };
                    if size == 0 {
                        loop {
                            match self.line() {
                                Some(l) if l.is_empty() => break,
                                Some(_) => {}
                                None => return Read1::Broken("cut trailers".into()),
                            }
                        }
                        break;
                    }
                    let Some(data) = self.exact(size + 2) else {
                        return Read1::Broken("a chunk cut short".into());
                    };
                    if &data[size..] != b"\r\n" {
                        return Read1::Broken("a chunk without CRLF".into());
                    }
                    answer.body.extend_from_slice(&data[..size]);
                }
            } else {
                while self.fill() {}
                answer.body = std::mem::take(&mut self.buf);
            }
            return Read1::Answer(answer);
        }
    }
}

/// What one exchange should see, decided by the case and what happened.
struct Planned {
    case: usize,
    mode: Mode,
}

/// The outcome of one exchange, for the app-side oracle.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub case: usize,
    pub mode: Mode,
    /// The case was forwarded (for `either`: as it turned out).
    pub forwarded: bool,
    /// Whether the canary must reach the app.
    pub canary_served: bool,
    pub failures: Vec<String>,
}

fn check_recorded(answer: &Answer, tag: &str, want: Option<&Want>) -> Option<String> {
    let head = want.is_some_and(|w| w.method.eq_ignore_ascii_case("HEAD"));
    if answer.status == 200 && head && answer.body.is_empty() {
        return None; // no body to match: the app side checks it
    }
    if answer.status != 200 {
        return Some(format!(
            "{tag}: got {} {} instead of the app's answer",
            answer.status,
            show(&answer.body[..answer.body.len().min(120)])
        ));
    }
    let Some(json) = answer.json() else {
        return Some(format!(
            "{tag}: an answer that is not the recorder's: {}",
            show(&answer.body[..answer.body.len().min(120)])
        ));
    };
    if json["case"].as_str() != Some(tag) {
        return Some(format!(
            "{tag}: received the answer to another request (case {}, target {})",
            json["case"], json["target"]
        ));
    }
    if let Some(want) = want {
        if json["method"].as_str() != Some(&want.method)
            || json["target"].as_str() != Some(&want.target)
        {
            return Some(format!(
                "{tag}: the app saw {} {} (want {} {})",
                json["method"], json["target"], want.method, want.target
            ));
        }
        if json["body_len"].as_u64() != Some(want.body.len() as u64) {
            return Some(format!(
                "{tag}: the app saw a body of {} bytes (want {})",
                json["body_len"],
                want.body.len()
            ));
        }
    }
    None
}

fn run_exchange(port: u16, cases: &[Case], plan: &Planned) -> Outcome {
    let case = &cases[plan.case];
    let mode = plan.mode;
    let mut failures = Vec::new();
    let mut bytes = Vec::new();
    if mode == Mode::Behind {
        bytes.extend(plain_request("/first", &first_tag(&case.name, mode)));
    }
    for (i, piece) in case.pieces.iter().enumerate() {
        if case.tag {
            bytes.extend(tagged(piece, &piece_tag(&case.name, mode, i)));
        } else {
            bytes.extend_from_slice(piece);
        }
    }
    if mode != Mode::Alone {
        bytes.extend(plain_request("/canary", &canary_tag(&case.name, mode)));
    }
    let mut raw = Raw::connect(port, EXCHANGE_TIMEOUT);
    raw.send(&bytes);
    if case.eof {
        raw.half_close();
    }
    let fail = |failures: &mut Vec<String>, what: String| failures.push(what);

    if mode == Mode::Behind {
        match raw.answer(false) {
            Read1::Answer(a) => {
                if let Some(f) = check_recorded(&a, &first_tag(&case.name, mode), None) {
                    fail(&mut failures, f);
                }
            }
            other => fail(
                &mut failures,
                format!("the request before the case got no answer: {other:?}"),
            ),
        }
    }

    let head_only = |i: usize| {
        case.requests
            .get(i)
            .is_some_and(|w| w.method.eq_ignore_ascii_case("HEAD"))
    };
    let mut forwarded = false;
    let mut canary_served = false;
    let first = raw.answer(head_only(0));
    let refused_status = |first: &Read1| -> Option<u16> {
        match first {
            Read1::Answer(a) if a.status != 200 && !a.body.starts_with(b"recorder:") => {
                Some(a.status)
            }
            Read1::Closed => Some(0),
            _ => None,
        }
    };
    let decided = match case.expect {
        Expect::Either => {
            if refused_status(&first).is_some() {
                Expect::Refuse
            } else {
                Expect::Forward
            }
        }
        e => e,
    };
    match decided {
        Expect::Refuse => {
            let statuses = if case.statuses.is_empty() {
                vec![400]
            } else {
                case.statuses.clone()
            };
            match first {
                Read1::Answer(a) if a.body.starts_with(b"recorder:") => fail(
                    &mut failures,
                    format!("forwarded, and the app (h11) refused it: {}", show(&a.body)),
                ),
                Read1::Answer(a) => {
                    if !statuses.contains(&a.status) {
                        let what = match a.json() {
                            Some(j) if j["case"].is_string() => format!(
                                "forwarded (the app answered {} {})",
                                j["method"], j["target"]
                            ),
                            _ => format!("{} {}", a.status, show(&a.body[..a.body.len().min(80)])),
                        };
                        fail(&mut failures, format!("want {statuses:?}, got {what}"));
                    } else if !raw.closes() {
                        fail(
                            &mut failures,
                            format!("refused with {} but the connection stayed open", a.status),
                        );
                    }
                }
                Read1::Closed => {
                    if !statuses.contains(&0) {
                        fail(
                            &mut failures,
                            format!("want {statuses:?}, the connection closed without an answer"),
                        );
                    }
                }
                Read1::Timeout => fail(
                    &mut failures,
                    format!("want {statuses:?}, no answer within {EXCHANGE_TIMEOUT:?}"),
                ),
                Read1::Broken(what) => {
                    if !statuses.contains(&0) || !raw.nothing_yet() {
                        fail(&mut failures, format!("want {statuses:?}, got {what}"));
                    }
                }
            }
        }
        _ => {
            forwarded = true;
            let mut next = Some(first);
            for (i, want) in case.requests.iter().enumerate() {
                let got = next.take().unwrap_or_else(|| raw.answer(head_only(i)));
                let tag = piece_tag(&case.name, mode, i);
                match got {
                    Read1::Answer(a) => {
                        if let Some(f) = check_recorded(&a, &tag, Some(want)) {
                            fail(&mut failures, f);
                        }
                        if let Some(most) = case.interim {
                            if a.interim > most {
                                fail(
                                    &mut failures,
                                    format!(
                                        "{tag}: {} interim answers (at most {most})",
                                        a.interim
                                    ),
                                );
                            }
                        }
                    }
                    other => {
                        fail(
                            &mut failures,
                            format!("{tag}: want the app's answer, got {other:?}"),
                        );
                        break;
                    }
                }
            }
            canary_served = !case.closes && mode != Mode::Alone;
            if failures.is_empty() {
                if case.closes {
                    if !raw.closes() {
                        fail(
                            &mut failures,
                            "the connection stayed open after a closing request".into(),
                        );
                    }
                } else if mode != Mode::Alone {
                    match next.take().unwrap_or_else(|| raw.answer(false)) {
                        Read1::Answer(a) => {
                            if let Some(f) = check_recorded(&a, &canary_tag(&case.name, mode), None)
                            {
                                fail(&mut failures, f);
                            }
                        }
                        other => fail(
                            &mut failures,
                            format!("the canary got no answer: {other:?}"),
                        ),
                    }
                }
            }
        }
    }
    Outcome {
        case: plan.case,
        mode,
        forwarded,
        canary_served,
        failures,
    }
}

/// Runs every case in every mode against one server; returns the outcomes.
fn run_all(port: u16, cases: &Arc<Vec<Case>>) -> Vec<Outcome> {
    let queue: VecDeque<Planned> = (0..cases.len())
        .flat_map(|case| {
            Mode::ALL
                .into_iter()
                .map(move |mode| Planned { case, mode })
        })
        // A case ending in the client's EOF mid-message is sent alone: a
        // canary after it would become part of it (a body, say), and the LB
        // may drop a half-closed connection's pipeline.
        .filter(|p| !(cases[p.case].eof && p.mode != Mode::Alone))
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (queue, outcomes, cases) = (queue.clone(), outcomes.clone(), cases.clone());
            thread::spawn(move || loop {
                let Some(plan) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                    break;
                };
                let outcome = run_exchange(port, &cases, &plan);
                outcomes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(outcome);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let mut all = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    all.sort_by_key(|o| (o.case, o.mode as usize));
    all
}

/// Runs `kind` ("request" | "response") items through the three parsers.
pub fn parse3(kind: &str, items: Vec<Value>) -> Value {
    parse3_with(kind, items, true)
}

/// `resync`: llhttp goes on past a request it refuses (where h11 ends it).
pub fn parse3_with(kind: &str, items: Vec<Value>, resync: bool) -> Value {
    let script = repo().join("tests/support/parsers.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 tests/support/parsers.py");
    let job = json!({"kind": kind, "items": items, "resync": resync});
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.to_string().as_bytes())
        .expect("write job");
    let out = child.wait_with_output().expect("parsers.py");
    assert!(
        out.status.success(),
        "parsers.py failed (are h11==0.16.0 and llhttp==9.3.0.0 installed? see .ci/run):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parsers.py output")
}

pub const PARSERS: [&str; 3] = ["h11", "lenient", "llhttp"];

fn field_values<'a>(fields: &'a Value, name: &str) -> Vec<&'a str> {
    fields
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|f| f[0].as_str().is_some_and(|k| k.eq_ignore_ascii_case(name)))
                .filter_map(|f| f[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn tag_of(message: &Value) -> Option<String> {
    field_values(&message["headers"], "x-case")
        .first()
        .map(|s| s.to_string())
}

/// Compares one message the app received with what it should be.
fn mismatch(message: &Value, want: &Want, port: u16, parser: &str) -> Vec<String> {
    let mut out = Vec::new();
    let method = message["method"].as_str().unwrap_or("");
    let target = message["target"].as_str().unwrap_or("");
    if method != want.method || target != want.target {
        out.push(format!(
            "the app saw {method} {target} (want {} {})",
            want.method, want.target
        ));
    }
    let body = unhex(message["body"].as_str().unwrap_or(""));
    if body != want.body {
        out.push(format!(
            "the app saw the body {:?} (want {:?})",
            show(&body),
            show(&want.body)
        ));
    }
    for (name, value) in &want.headers {
        let value = value.replace("{port}", &port.to_string());
        let got = field_values(&message["headers"], name);
        if got != [value.as_str()] {
            out.push(format!(
                "header {name}: the app saw {got:?} (want [{value:?}])"
            ));
        }
    }
    for name in &want.absent {
        let got = field_values(&message["headers"], name);
        if !got.is_empty() {
            out.push(format!("header {name} reached the app: {got:?}"));
        }
    }
    for (name, value) in &want.trailers {
        let got = field_values(&message["trailers"], name);
        if got != [value.as_str()] {
            out.push(format!(
                "trailer {name}: the app saw {got:?} (want [{value:?}])"
            ));
        }
    }
    for name in &want.trailers_absent {
        let got = field_values(&message["trailers"], name);
        if !got.is_empty() {
            out.push(format!("trailer {name} reached the app: {got:?}"));
        }
    }
    if parser == "lenient" {
        for line in message["chunks"].as_array().into_iter().flatten() {
            let line = unhex(line.as_str().unwrap_or(""));
            if line.is_empty() || line.len() > 16 || !line.iter().all(u8::is_ascii_hexdigit) {
                out.push(format!(
                    "a chunk line that is not canonical: {:?}",
                    show(&line)
                ));
            }
        }
    }
    out
}

/// Which tag a case's request, the canary or the first request has.
enum Role {
    Piece(usize, usize, Mode),
    Canary(usize, Mode),
    First(usize, Mode),
}

/// The app-side oracle: every recorded connection parsed under the three
/// parsers must hold exactly the requests the clients sent, no more.
fn check_records(records: &Path, cases: &[Case], outcomes: &[Outcome], port: u16) -> Vec<String> {
    let mut failures = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(records)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "bin"));
    files.sort();
    for err in std::fs::read_dir(records).into_iter().flatten().flatten() {
        if err.path().extension().is_some_and(|e| e == "err") {
            // h11's refusals show again (attributed) in the h11 parse below;
            // anything else is the recorder's own trouble.
            let text = std::fs::read_to_string(err.path()).unwrap_or_default();
            for line in text.lines().filter(|l| !l.starts_with("h11:")) {
                failures.push(format!(
                    "? [recorder]: {}: {line}",
                    err.path().file_name().unwrap_or_default().to_string_lossy(),
                ));
            }
        }
    }
    let items: Vec<Value> = files
        .iter()
        .map(|p| json!({"id": p.display().to_string(), "path": p.display().to_string()}))
        .collect();
    let parsed = parse3("request", items);

    let mut roles: BTreeMap<String, Role> = BTreeMap::new();
    for (ci, case) in cases.iter().enumerate() {
        for mode in Mode::ALL {
            for i in 0..case.pieces.len() {
                roles.insert(piece_tag(&case.name, mode, i), Role::Piece(ci, i, mode));
            }
            roles.insert(canary_tag(&case.name, mode), Role::Canary(ci, mode));
            roles.insert(first_tag(&case.name, mode), Role::First(ci, mode));
        }
    }
    let outcome = |ci: usize, mode: Mode| outcomes.iter().find(|o| o.case == ci && o.mode == mode);

    for parser in PARSERS {
        // tag -> (complete count, incomplete count)
        let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        // Requests the parser refused (and skipped).
        let mut refused: Vec<String> = Vec::new();
        for file in &files {
            let name = file
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let result = &parsed[file.display().to_string()][parser];
            let messages = result["messages"].as_array().cloned().unwrap_or_default();
            let end = result["end"].as_str().unwrap_or("");
            for e in result["errors"].as_array().into_iter().flatten() {
                let tag = e["tag"].as_str().unwrap_or("?").to_string();
                let tolerated = match roles.get(&tag) {
                    Some(Role::Piece(ci, ..)) => {
                        cases[*ci].parsers_may_refuse.iter().any(|p| p == parser)
                    }
                    _ => false,
                };
                if !tolerated {
                    failures.push(format!(
                        "{tag} [{parser}]: {name}: the app's parser refuses what the LB sent: {}",
                        e["error"].as_str().unwrap_or("")
                    ));
                }
                refused.push(tag);
            }
            let mut previous = String::from("?");
            for (mi, m) in messages.iter().enumerate() {
                let complete = m["complete"].as_bool().unwrap_or(false);
                let last = mi + 1 == messages.len();
                let Some(tag) = tag_of(m) else {
                    if last && !complete && end == "error" {
                        continue; // the parser's error, reported below
                    }
                    let previous = m["after"].as_str().unwrap_or(&previous);
                    failures.push(format!(
                        "{previous} [{parser}]: {name}: after it, the app got a request no client sent: {} {}",
                        m["method"].as_str().unwrap_or("?"),
                        m["target"].as_str().unwrap_or("?")
                    ));
                    continue;
                };
                previous = tag.clone();
                let entry = seen.entry(tag.clone()).or_default();
                if complete {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
                let Some(role) = roles.get(&tag) else {
                    failures.push(format!(
                        "[{parser}] {name}: a request with an unknown tag {tag}"
                    ));
                    continue;
                };
                match role {
                    Role::Piece(ci, i, mode) => {
                        let Some(o) = outcome(*ci, *mode) else {
                            continue;
                        };
                        if complete && o.forwarded {
                            if let Some(want) = cases[*ci].requests.get(*i) {
                                for f in mismatch(m, want, port, parser) {
                                    failures.push(format!("{tag} [{parser}]: {f}"));
                                }
                            }
                        }
                        if !(complete || last && end == "incomplete") {
                            failures.push(format!(
                                "{tag} [{parser}]: an unfinished request inside {name} ({end})"
                            ));
                        }
                        if !complete && o.forwarded {
                            failures.push(format!("{tag} [{parser}]: the app saw only part of a forwarded request ({end}: {})", result["error"]));
                        }
                    }
                    Role::Canary(..) | Role::First(..) => {
                        if !complete {
                            failures.push(format!(
                                "{tag} [{parser}]: the app saw only part of it ({end})"
                            ));
                        }
                    }
                }
            }
            if end == "error" {
                let at = result["error_tag"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| messages.last().and_then(tag_of))
                    .unwrap_or_else(|| "?".into());
                failures.push(format!(
                    "{at} [{parser}]: {name}: the app's parser refuses what the LB sent: {} (unread: {:?})",
                    result["error"].as_str().unwrap_or(""),
                    show(&unhex(result["rest"].as_str().unwrap_or("")))
                        .chars()
                        .take(160)
                        .collect::<String>()
                ));
            }
            if end == "closed" && !result["rest"].as_str().unwrap_or("").is_empty() {
                failures.push(format!(
                    "[{parser}] {name}: bytes after a request that closes the connection: {:?}",
                    show(&unhex(result["rest"].as_str().unwrap_or("")))
                ));
            }
        }
        // Everything that had to arrive did, once; nothing else did.
        for (tag, role) in &roles {
            let (complete, _) = seen.get(tag).copied().unwrap_or_default();
            let wanted = match role {
                Role::Piece(ci, i, mode) => outcome(*ci, *mode)
                    .is_some_and(|o| o.forwarded && *i < cases[*ci].requests.len()),
                Role::Canary(ci, mode) => outcome(*ci, *mode).is_some_and(|o| o.canary_served),
                Role::First(_, mode) => *mode == Mode::Behind,
            };
            let clean = |ci: &usize, mode: &Mode| {
                outcome(*ci, *mode).is_some_and(|o| o.failures.is_empty())
            };
            let relevant = match role {
                Role::Piece(ci, _, mode) | Role::Canary(ci, mode) | Role::First(ci, mode) => {
                    clean(ci, mode)
                }
            };
            let relevant = relevant && !refused.contains(tag);
            if wanted && (complete > 1 || (complete == 0 && relevant)) {
                failures.push(format!(
                    "{tag} [{parser}]: the app got it {complete} times (want once)"
                ));
            }
            if !wanted && complete > 0 {
                failures.push(format!(
                    "{tag} [{parser}]: reached the app as a complete request, but must not ({complete}×)"
                ));
            }
        }
    }
    failures
}

/// A corpus run's result: failures per case, and the log.
pub struct Report {
    pub by_case: BTreeMap<String, Vec<String>>,
    pub elapsed: Duration,
}

impl Report {
    pub fn text(&self, title: &str) -> String {
        let mut out = format!(
            "{title}: {} failing cases ({:?})\n",
            self.by_case.len(),
            self.elapsed
        );
        for (case, failures) in &self.by_case {
            out.push_str(&format!("- {case}\n"));
            let mut shown: Vec<&String> = Vec::new();
            for f in failures {
                if !shown.contains(&f) {
                    shown.push(f);
                }
            }
            for f in shown.iter().take(8) {
                out.push_str(&format!("    {f}\n"));
            }
            if shown.len() > 8 {
                out.push_str(&format!("    … {} more\n", shown.len() - 8));
            }
        }
        out
    }

    /// Writes the report beside the test binaries and fails with it.
    pub fn assert_clean(&self, title: &str) {
        let text = self.text(title);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{title}.txt"));
        let _ = std::fs::write(&path, &text);
        assert!(
            self.by_case.is_empty(),
            "{text}\n(also in {})",
            path.display()
        );
    }
}

/// Runs request `cases` (all with the same flags) through a fresh server
/// in front of `w:2` recorders, in every mode, and checks both sides.
pub fn run_request_corpus(cases: Vec<Case>, flags: &[String]) -> Report {
    let started = Instant::now();
    // Kept after the run (beside the report) for a look at what the app got.
    let records = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "records-{}",
        if flags.is_empty() {
            "default".to_string()
        } else {
            flags.join("_").replace(['-', '='], "")
        }
    ));
    let _ = std::fs::remove_dir_all(&records);
    std::fs::create_dir_all(&records).expect("record dir");
    let recorder = recorder();
    let mut args: Vec<&str> = vec![
        &recorder,
        "w:2",
        "--no-access-log",
        "--queue-timeout-ms=30000",
    ];
    args.extend(flags.iter().map(String::as_str));
    let mut server = Server::start_with(
        &args,
        Start {
            env: vec![("RECORD_DIR", records.display().to_string())],
            ..Start::default()
        },
    );
    server.wait_workers(2);
    let port = server.port;
    let cases = Arc::new(cases);
    let outcomes = run_all(port, &cases);
    // Stop the server: every app connection closes, every record is whole.
    server.stop();
    let mut by_case: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in &outcomes {
        for f in &o.failures {
            by_case
                .entry(cases[o.case].name.clone())
                .or_default()
                .push(format!("{}: {f}", o.mode.label()));
        }
    }
    for f in check_records(&records, &cases, &outcomes, port) {
        let case = f
            .split(['@', ' '])
            .next()
            .filter(|c| cases.iter().any(|k| k.name == *c))
            .unwrap_or("(unattributed)")
            .to_string();
        by_case.entry(case).or_default().push(f);
    }
    Report {
        by_case,
        elapsed: started.elapsed(),
    }
}

/// Runs a corpus file's request cases, one server per set of flags.
pub fn run_request_file(path: &Path, title: &str) {
    let cases = request_cases(path);
    let mut groups: BTreeMap<Vec<String>, Vec<Case>> = BTreeMap::new();
    for c in cases {
        groups.entry(c.flags.clone()).or_default().push(c);
    }
    let mut all = Report {
        by_case: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for (flags, cases) in groups {
        let names: Vec<String> = cases.iter().map(|c| c.name.clone()).collect();
        // A server that cannot start with these flags (say, a flag not
        // implemented yet) fails its cases, not the other groups.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_request_corpus(cases, &flags)
        }));
        match run {
            Ok(report) => {
                all.by_case.extend(report.by_case);
                all.elapsed += report.elapsed;
            }
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first = text.lines().next().unwrap_or("").to_string();
                for name in names {
                    all.by_case
                        .entry(name)
                        .or_default()
                        .push(format!("the run with {flags:?} failed: {first}"));
                }
            }
        }
    }
    all.assert_clean(title);
}

/// What the three parsers make of each case's own bytes (untagged), next to
/// the expected decision: where they disagree with each other, a lenient
/// back end behind a lenient front end could be desynchronized.
pub fn verdict_table(cases: &[Case]) -> String {
    let items: Vec<Value> = cases
        .iter()
        .map(|c| json!({"id": c.name, "hex": hex(&c.pieces.concat()), "eof": c.eof}))
        .collect();
    let parsed = parse3_with("request", items, false);
    let mut out =
        String::from("case | expect | h11 | lenient | llhttp   (end/complete requests: targets)\n");
    for c in cases {
        let mut cells = Vec::new();
        for parser in PARSERS {
            let r = &parsed[&c.name][parser];
            let complete: Vec<&str> = r["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["complete"].as_bool() == Some(true))
                .filter_map(|m| m["target"].as_str())
                .collect();
            // "closed" (h11: the connection must close after it) reads as
            // "clean" here: what matters is which requests each one sees.
            let end = match r["end"].as_str().unwrap_or("?") {
                "closed" => "clean",
                other => other,
            };
            cells.push(format!(
                "{}/{}{}",
                end,
                complete.len(),
                if complete.len() > 1 {
                    format!(":{}", complete.join(","))
                } else {
                    String::new()
                }
            ));
        }
        let expect = match c.expect {
            Expect::Refuse => format!("refuse {:?}", c.statuses),
            Expect::Forward => format!("forward {}", c.requests.len()),
            Expect::Either => "either".to_string(),
        };
        let agree = cells.iter().all(|x| x == &cells[0]);
        out.push_str(&format!(
            "{}{} | {expect} | {}\n",
            if agree { "  " } else { "! " },
            c.name,
            cells.join(" | ")
        ));
    }
    out
}

// ---- responses ----------------------------------------------------------

/// Runs the response cases against a `w:1` responder server, one at a time:
/// the case's request and a canary on one connection, then a fresh client;
/// the client-side bytes parsed under the three parsers.
pub fn run_response_cases(cases: &[ResponseCase], title: &str) {
    let started = Instant::now();
    let responder = responder();
    let server = Server::start(&[
        &responder,
        "w:1",
        "--no-access-log",
        "--read-timeout-ms=2000",
    ]);
    server.wait_workers(1);
    let port = server.port;
    let mut by_case: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut items = Vec::new();
    for case in cases {
        let canary = format!("{}/canary", case.name);
        let mut raw = Raw::connect(port, EXCHANGE_TIMEOUT);
        raw.send(
            format!(
                "{} /r/{} HTTP/1.1\r\nHost: a\r\n\r\nGET /ok?tag={canary} HTTP/1.1\r\nHost: a\r\n\r\n",
                case.method, case.name
            )
            .as_bytes(),
        );
        let want_end = format!("ok {canary}");
        while !raw.received.ends_with(want_end.as_bytes()) && raw.fill() {}
        let eof = raw.eof;
        items.push(json!({
            "id": case.name,
            "hex": hex(&raw.received),
            "methods": [case.method, "GET"],
            "eof": eof,
        }));
        // A fresh client gets its own answer.
        let next = format!("{}/next", case.name);
        let mut fresh = Raw::connect(port, EXCHANGE_TIMEOUT);
        fresh.send(format!("GET /ok?tag={next} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        match fresh.answer(false) {
            Read1::Answer(a) if a.status == 200 && a.body == format!("ok {next}").as_bytes() => {}
            Read1::Answer(a) => by_case.entry(case.name.clone()).or_default().push(format!(
                "the next client got {} {:?} instead of its own answer",
                a.status,
                show(&a.body)
            )),
            other => by_case
                .entry(case.name.clone())
                .or_default()
                .push(format!("the next client got no answer: {other:?}")),
        }
    }
    let parsed = parse3("response", items);
    for case in cases {
        let canary = format!("ok {}/canary", case.name);
        for parser in PARSERS {
            let r = &parsed[&case.name][parser];
            let messages: Vec<&Value> = r["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["interim"].as_bool() != Some(true))
                .collect();
            let end = r["end"].as_str().unwrap_or("");
            let mut fail = |f: String| {
                by_case
                    .entry(case.name.clone())
                    .or_default()
                    .push(format!("[{parser}] {f}"))
            };
            let Some(first) = messages.first() else {
                fail(format!("no response at all ({end} {})", r["error"]));
                continue;
            };
            let status = first["status"].as_u64().unwrap_or(0) as u16;
            let body = unhex(first["body"].as_str().unwrap_or(""));
            let complete = first["complete"].as_bool().unwrap_or(false);
            let forwarded_ok = complete && status == case.status && body == case.body;
            let refused_ok = complete && status == 502;
            let cut = !complete && case.cut_ok && messages.len() == 1;
            let ok = match case.expect {
                Expect::Forward => forwarded_ok,
                Expect::Refuse => refused_ok || cut,
                Expect::Either => forwarded_ok || refused_ok,
            };
            if !ok {
                fail(format!(
                    "got {status} {:?}{} (want {:?} {} {:?})",
                    show(&body[..body.len().min(120)]),
                    if complete { "" } else { ", cut short" },
                    case.expect,
                    if case.expect == Expect::Refuse {
                        502
                    } else {
                        case.status
                    },
                    show(&case.body)
                ));
            }
            for name in &case.trailers_absent {
                if !field_values(&first["trailers"], name).is_empty() {
                    fail(format!("trailer {name} reached the client"));
                }
            }
            if parser == "lenient" {
                for line in first["chunks"].as_array().into_iter().flatten() {
                    let line = unhex(line.as_str().unwrap_or(""));
                    if line.is_empty() || !line.iter().all(u8::is_ascii_hexdigit) {
                        fail(format!(
                            "a chunk line that is not canonical: {:?}",
                            show(&line)
                        ));
                    }
                }
            }
            // After the first answer: the canary's, or a closed connection.
            match messages.get(1) {
                Some(m) => {
                    let body = unhex(m["body"].as_str().unwrap_or(""));
                    if body != canary.as_bytes() || m["status"].as_u64() != Some(200) {
                        fail(format!(
                            "the next request on the connection got {} {:?}",
                            m["status"],
                            show(&body[..body.len().min(120)])
                        ));
                    }
                }
                None if complete && !matches!(end, "clean" | "closed") => {
                    fail(format!("after the answer: {end} {}", r["error"]))
                }
                None => {}
            }
            if messages.len() > 2 {
                fail(format!("{} responses for 2 requests", messages.len()));
            }
            if end == "error" && messages.len() > 1 {
                fail(format!(
                    "bytes no parser can read after the answers: {}",
                    r["error"]
                ));
            }
        }
    }
    let report = Report {
        by_case,
        elapsed: started.elapsed(),
    };
    drop(server);
    report.assert_clean(title);
}
