//! Micro benchmarks of the LB's own code on the request path: the pool's
//! dispatch and release, the queue, and header normalization.
//!
//!     cargo bench --bench micro

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use rip_server::lb::headers;
use rip_server::lb::pool::{Outcome, Pool};

type BenchPool = Pool<(), u64>;

fn pool_with(workers: u32) -> BenchPool {
    let mut pool: BenchPool = Pool::new(8192, 0);
    let now = Instant::now();
    for id in 0..workers {
        pool.join(
            id,
            Path::new(&format!("/tmp/rip.{id}.sock")),
            Some(1),
            now,
            |_, c| Err(c),
        );
    }
    pool
}

fn pool(c: &mut Criterion) {
    let now = Instant::now();
    let mut idle = pool_with(16);
    c.bench_function("pool: checkout + checkin (idle worker)", |b| {
        b.iter(|| {
            let checkout = idle.checkout().expect("an idle worker");
            idle.checkin(
                black_box(checkout.id),
                checkout.conn,
                Outcome::Done,
                now,
                |_, c| Err(c),
            );
        })
    });

    let mut busy = pool_with(1);
    let held = busy.checkout().expect("the only worker");
    let deadline = now + Duration::from_secs(2);
    c.bench_function("pool: enqueue + hand over on checkin", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            busy.enqueue(black_box(n), deadline);
            busy.checkin(held.id, None, Outcome::Done, now, |waiter, checkout| {
                black_box(waiter);
                let _ = black_box(checkout);
                Ok(())
            });
        })
    });

    let mut queue = pool_with(0);
    c.bench_function("pool: enqueue + cancel (queue timeout)", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            if let rip_server::lb::pool::Enqueue::Queued(key) = queue.enqueue(n, deadline) {
                queue.cancel(black_box(key));
            }
        })
    });
}

fn typical_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-US,en;q=0.9"),
        ("connection", "keep-alive"),
        ("cookie", "session=abc123; theme=dark"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn typical_response() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "text/plain;charset=utf-8"),
        ("content-length", "4"),
        ("date", "Sat, 28 Nov 2026 12:00:00 GMT"),
        ("cache-control", "no-store"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

fn header_normalization(c: &mut Criterion) {
    let request = typical_request();
    let client = Some("127.0.0.1".parse().expect("ip"));
    c.bench_function("headers: request", |b| {
        b.iter_batched_ref(
            || request.clone(),
            |h| headers::request(black_box(h), client),
            criterion::BatchSize::SmallInput,
        )
    });
    let response = typical_response();
    c.bench_function("headers: response", |b| {
        b.iter_batched_ref(
            || response.clone(),
            |h| black_box(headers::response(black_box(h))),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, pool, header_normalization);
criterion_main!(benches);
