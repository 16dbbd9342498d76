//! Micro benchmarks of the LB's own code on the request path: the pool's
//! dispatch and release, the queue, and parsing and rewriting heads.
//!
//!     cargo bench --bench micro

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rip_server::lb::http1;
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
        )
        .expect("distinct ids");
    }
    pool
}

fn pool(c: &mut Criterion) {
    let now = Instant::now();
    let mut idle = pool_with(16);
    c.bench_function("pool: checkout + checkin (idle worker)", |b| {
        b.iter(|| {
            let checkout = idle.checkout(now).expect("an idle worker");
            idle.checkin(
                black_box(checkout.id),
                checkout.epoch,
                checkout.conn,
                Outcome::Done,
                now,
                |_, c| Err(c),
            );
        })
    });

    let mut busy = pool_with(1);
    let held = busy.checkout(now).expect("the only worker");
    let deadline = now + Duration::from_secs(2);
    c.bench_function("pool: enqueue + hand over on checkin", |b| {
        let mut n = 0u64;
        let mut live = held.epoch;
        b.iter(|| {
            n += 1;
            busy.enqueue(black_box(n), deadline);
            let mut next = live;
            busy.checkin(
                held.id,
                live,
                None,
                Outcome::Done,
                now,
                |waiter, checkout| {
                    black_box(waiter);
                    next = checkout.epoch;
                    let _ = black_box(checkout);
                    Ok(())
                },
            );
            live = next;
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

const REQUEST: &[u8] = b"GET /api/items?page=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\nConnection: keep-alive\r\nCookie: session=abc123; theme=dark\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain;charset=utf-8\r\nContent-Length: 4\r\nDate: Sat, 28 Nov 2026 12:00:00 GMT\r\nCache-Control: no-store\r\n\r\npong";

fn heads(c: &mut Criterion) {
    let context = http1::Context {
        hop: rip_server::lb::forwarded::Hop {
            client: Some("127.0.0.1".parse().expect("ip")),
            port: Some(3000),
            request_id: b"5f0c7d2e-1b1a-4c4e-9a52-0b1c2d3e4f50",
            received_us: 1_764_331_200_000_123,
            ..Default::default()
        },
        host: Some("127.0.0.1:3000"),
        underscores: false,
    };
    let asked = http1::Asked {
        request_id: b"5f0c7d2e-1b1a-4c4e-9a52-0b1c2d3e4f50",
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("http1: parse and rewrite a request head", |b| {
        b.iter(|| black_box(http1::parse_request(black_box(REQUEST), &context, &mut out)))
    });
    c.bench_function("forwarded: a request id", |b| {
        b.iter(|| black_box(rip_server::lb::forwarded::RequestId::generate()))
    });
    c.bench_function("http1: parse and rewrite a response head", |b| {
        b.iter(|| {
            black_box(http1::parse_response(
                black_box(RESPONSE),
                &asked,
                b"Sat, 28 Nov 2026 12:00:00 GMT",
                &mut out,
            ))
        })
    });
}

criterion_group!(benches, pool, heads);
criterion_main!(benches);
