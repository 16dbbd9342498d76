//! h11's own framing cases (`tests/corpus/h11/cases.json`, converted once
//! from the h11 0.16.0 sdist on PyPI), through the real binary and the same
//! oracle as `tests/smuggling.rs`. Also prints what h11, the lenient parser
//! and llhttp each make of every corpus case's raw bytes, where they
//! disagree (`cargo test --test corpus -- --nocapture`), and checks the
//! disagreements SECURITY.md cites.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use support::framing::*;

#[test]
fn h11_request_cases() {
    run_request_file(&corpus_path("h11/cases.json"), "corpus-h11-requests");
}

#[test]
fn h11_response_cases() {
    let cases = response_cases(&corpus_path("h11/cases.json"));
    run_response_cases(&cases, "corpus-h11-responses");
}

#[test]
fn what_each_parser_makes_of_the_corpora() {
    let mut table = String::new();
    for file in ["gadgets.json", "h11/cases.json"] {
        let cases = request_cases(&corpus_path(file));
        table.push_str(&format!("## {file}\n"));
        table.push_str(&verdict_table(&cases));
    }
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("framing-verdicts.txt");
    std::fs::write(&path, &table).unwrap();
    eprintln!("{table}\n(written to {})", path.display());
    // What SECURITY.md says of the parsers behind the LB, as they are:
    // each of these is why the LB refuses the case (h11 | lenient | llhttp,
    // as "end/complete requests[:targets]").
    for (case, want) in [
        (
            "issue-chunked-lf-after-last-chunk",
            "clean/2:/echo,/slow?ms=700 | clean/2:/echo,/slow?ms=700 | error/0",
        ),
        (
            "chunk-trailer-bare-lf-smuggle",
            "clean/2:/g,/slow?ms=700 | clean/2:/g,/slow?ms=700 | error/0",
        ),
        ("lf-in-header-hides-cl", "clean/1 | clean/1 | error/0"),
        ("chunk-size-trailing-space", "clean/1 | clean/1 | error/0"),
        ("chunk-ext-empty", "clean/1 | clean/1 | error/0"),
        ("chunk-size-17-digits", "clean/1 | clean/1 | clean/1"),
        ("te-gzip-chunked", "error/0 | clean/1 | clean/1"),
        ("host-missing", "error/0 | clean/1 | clean/1"),
    ] {
        let line = table
            .lines()
            .find(|l| l[2..].starts_with(&format!("{case} |")))
            .unwrap_or_else(|| panic!("no case {case} in the corpus"));
        let verdicts = line.splitn(3, " | ").nth(2).unwrap();
        assert_eq!(verdicts, want, "what the parsers make of {case}");
    }
}
