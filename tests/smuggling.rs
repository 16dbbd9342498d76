//! End-to-end request smuggling: the real binary in front of a recording
//! app, fed the gadgets of `tests/corpus/gadgets.json` and the misbehaving
//! responses of `tests/corpus/responses.json`. For every case, alone on a
//! fresh connection, followed by a canary and pipelined behind another
//! request, the LB's decision must be the spec's, the bytes the app
//! received must parse — under h11, a lenient LF-tolerant parser and
//! llhttp — as exactly the requests the client sent, and every answer must
//! reach the client that asked for it (`tests/support/framing.rs`).

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::time::{Duration, Instant};

use support::framing::*;
use support::*;

#[test]
fn gadgets() {
    run_request_file(&corpus_path("gadgets.json"), "smuggling-gadgets");
}

#[test]
fn responses() {
    let cases = response_cases(&corpus_path("responses.json"));
    run_response_cases(&cases, "smuggling-responses");
}

/// The issue's reproduction: a chunked body ended by `0\r\n\n` smuggles
/// `GET /slow?ms=700` to an LF-tolerant app; its answer must never reach the
/// next, unrelated client.
#[test]
fn a_bare_lf_after_the_last_chunk_smuggles_nothing_to_the_next_client() {
    let records = tempfile::tempdir().unwrap();
    let mut server = Server::start_with(
        &[&recorder(), "w:1", "--no-access-log"],
        Start {
            env: vec![("RECORD_DIR", records.path().display().to_string())],
            ..Start::default()
        },
    );
    server.wait_workers(1);
    let mut a = Raw::connect(server.port, Duration::from_secs(5));
    a.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\nGET /slow?ms=700 HTTP/1.1\r\nHost: a\r\n\r\n");
    let first = a.answer(false);
    let started = Instant::now();
    let mut b = Raw::connect(server.port, Duration::from_secs(5));
    b.send(b"GET /ping HTTP/1.1\r\nHost: a\r\nX-Case: B\r\n\r\n");
    let answer = b.answer(false);
    let took = started.elapsed();
    server.stop();
    let Read1::Answer(answer) = answer else {
        panic!("the other client got no answer: {answer:?}");
    };
    let json = answer.json().unwrap_or_default();
    assert_eq!(
        (json["target"].as_str(), json["case"].as_str()),
        (Some("/ping"), Some("B")),
        "the other client got someone else's answer after {took:?}: {} {}",
        answer.status,
        show(&answer.body)
    );
    match first {
        Read1::Answer(a) => assert_eq!(a.status, 400, "the smuggling request: {}", show(&a.body)),
        other => panic!("the smuggling request got no 400: {other:?}"),
    }
    // The app never saw the smuggled request.
    for entry in std::fs::read_dir(records.path()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        let items = vec![serde_json::json!({"id": "r", "hex": hex(&bytes)})];
        let parsed = parse3("request", items);
        for parser in PARSERS {
            for m in parsed["r"][parser]["messages"].as_array().unwrap() {
                assert_ne!(
                    m["target"].as_str(),
                    Some("/slow?ms=700"),
                    "[{parser}] the app got the smuggled request: {}",
                    show(&bytes)
                );
            }
        }
    }
}

/// An app that writes a body to a HEAD, 10 ms after the head: the LB never
/// reuses that connection, so the next client never gets the body as its
/// answer.
#[test]
fn a_body_written_to_a_head_never_reaches_the_next_client() {
    let server = Server::start(&[&responder(), "w:1", "--no-access-log"]);
    server.wait_workers(1);
    for round in 0..3 {
        let mut a = Raw::connect(server.port, Duration::from_secs(5));
        a.send(b"HEAD /r/head-body-later HTTP/1.1\r\nHost: a\r\n\r\n");
        match a.answer(true) {
            Read1::Answer(r) => assert_eq!(r.status, 200),
            other => panic!("the HEAD got {other:?}"),
        }
        let tag = format!("next-{round}");
        let mut b = Raw::connect(server.port, Duration::from_secs(5));
        b.send(format!("GET /ok?tag={tag} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        match b.answer(false) {
            Read1::Answer(r) => assert_eq!(
                (r.status, show(&r.body)),
                (200, format!("ok {tag}")),
                "round {round}: the next client got the HEAD's body"
            ),
            other => panic!("round {round}: the next client got {other:?}"),
        }
    }
}
