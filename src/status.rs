//! `rip-server status [<app>] [--json]`: what a running server is doing,
//! as `passenger-status` shows it — the server (pid, uptime, app version,
//! state), its queue, and a row per worker.
//!
//! The servers are found as `--stop` finds them (their pid files, each pid
//! checked to be a manager of this user). The load balancer tells what it
//! knows over the control socket (`GET /workers`: the queue, and each
//! joined worker's state, requests and last use); `/proc` tells the rest
//! (each worker's pid, and the memory, CPU time and age of its process
//! tree, its app included). A worker process the LB does not list has not
//! joined yet (`starting`, when its id is newer than every joined one's;
//! ids are never reused) or has left (`stopping`).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::paths::Paths;
use crate::procfs::{self, Table};
use crate::stop::{self, StopTarget};
use crate::Failure;

/// How long the load balancer may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(target: StopTarget, as_json: bool) -> Result<(), Failure> {
    let found = stop::find(&target);
    if found.is_empty() {
        return Err(Failure::fatal(format!(
            "no running server {}",
            stop::describe(&target)
        )));
    }
    let dir = match &target {
        StopTarget::App(config) => config.paths.dir().to_path_buf(),
        StopTarget::All(dir) => dir.clone(),
    };
    let servers: Vec<Value> = found
        .iter()
        .map(|(process, prefix)| server(&dir, prefix, process.pid()))
        .collect();
    let text = if as_json {
        format!("{}\n", json!({ "servers": servers }))
    } else {
        servers.iter().map(table).collect::<Vec<_>>().join("\n")
    };
    crate::output::STDOUT.line(text.trim_end().as_bytes());
    Ok(())
}

/// One server, as JSON.
fn server(dir: &Path, prefix: &str, manager: u32) -> Value {
    let table = procfs::table();
    let asked =
        Paths::new(dir, Some(prefix.to_string()), "", "").and_then(|paths| ask(&paths.ctl()));
    let (lb, error) = match asked {
        Ok(lb) => (lb, None),
        Err(why) => (json!({}), Some(why)),
    };
    let joined: Vec<&Value> = lb["workers"]
        .as_array()
        .map(|w| w.iter().collect())
        .unwrap_or_default();
    let newest_joined = joined.iter().filter_map(|w| w["id"].as_u64()).max();
    let mut workers: Vec<Value> = Vec::new();
    let processes = worker_processes(manager, &table);
    for (id, pid) in &processes {
        let (rss, cpu) = procfs::tree_totals(*pid, &table);
        let lb_row = joined.iter().find(|w| w["id"].as_u64() == Some(*id as u64));
        let state = match lb_row {
            Some(row) => row["state"].clone(),
            None if newest_joined.is_none_or(|n| *id as u64 > n) => "starting".into(),
            None => "stopping".into(),
        };
        workers.push(json!({
            "id": id,
            "pid": pid,
            "version": lb_row.map_or(Value::Null, |r| r["version"].clone()),
            "state": state,
            "served": lb_row.map_or(json!(0), |r| r["served"].clone()),
            "uptime_secs": table.get(pid).map(|p| millis(p.age_secs)),
            "rss_bytes": rss,
            "cpu_secs": millis(cpu),
            "idle_secs": lb_row.and_then(|r| r["idle_secs"].as_f64()).map(millis),
        }));
    }
    let expected = lb["expected"].as_u64();
    let joined_count = lb["joined"].as_u64().unwrap_or(0);
    let state = match (&error, expected) {
        (Some(_), _) => "unreachable",
        (None, Some(n)) if joined_count >= n => "healthy",
        (None, _) => "degraded",
    };
    let version = workers.iter().filter_map(|w| w["version"].as_u64()).max();
    let mut server = json!({
        "prefix": prefix,
        "pid": manager,
        "uptime_secs": table.get(&manager).map(|p| millis(p.age_secs)),
        "state": state,
        "version": version,
        "expected": expected,
        "joined": joined_count,
        "queue": lb["queue"].clone(),
        "workers": workers,
    });
    if let Some(why) = error {
        server["error"] = why.into();
    }
    server
}

/// `GET /workers` from the load balancer, over its control socket.
fn ask(ctl: &Path) -> Result<Value, String> {
    let request = hyper::Request::get("/workers")
        .header(hyper::header::HOST, "lb")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let (status, body) = runtime.block_on(crate::http::unix_call(ctl, request, ASK_TIMEOUT))?;
    if status != hyper::StatusCode::OK {
        return Err(format!("the load balancer answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("the load balancer's answer: {e}"))
}

/// The manager's worker processes (`rip-server worker <id> ...`), by id.
fn worker_processes(manager: u32, table: &Table) -> Vec<(u32, u32)> {
    let mut found: Vec<(u32, u32)> = table
        .iter()
        .filter(|(_, p)| p.ppid == manager)
        .filter_map(|(&pid, _)| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            (args.get(1) == Some(&&b"worker"[..]))
                .then(|| std::str::from_utf8(args.get(2)?).ok()?.parse().ok())
                .flatten()
                .map(|id| (id, pid))
        })
        .collect();
    found.sort();
    found
}

/// One server as the terminal shows it.
fn table(server: &Value) -> String {
    let mut out = String::new();
    let num = |v: &Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    let queue = &server["queue"];
    out.push_str(&format!(
        "{}  pid {}  up {}  version {}  {}  {}/{} workers\n",
        server["prefix"].as_str().unwrap_or("?"),
        num(&server["pid"]),
        duration(server["uptime_secs"].as_f64()),
        num(&server["version"]),
        server["state"].as_str().unwrap_or("?"),
        num(&server["joined"]),
        num(&server["expected"]),
    ));
    if let Some(error) = server["error"].as_str() {
        out.push_str(&format!("  {error}\n"));
    }
    out.push_str(&format!(
        "queue: {} now, {} at most, {} timed out, {} turned away (full)\n",
        num(&queue["now"]),
        num(&queue["max"]),
        num(&queue["timeouts"]),
        num(&queue["full"]),
    ));
    let rows: Vec<[String; 9]> = server["workers"]
        .as_array()
        .map(|w| w.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|w| {
            [
                num(&w["id"]),
                num(&w["pid"]),
                num(&w["version"]),
                w["state"].as_str().unwrap_or("?").to_string(),
                num(&w["served"]),
                duration(w["uptime_secs"].as_f64()),
                mib(w["rss_bytes"].as_u64()),
                w["cpu_secs"]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{s:.2} s")),
                w["idle_secs"]
                    .as_f64()
                    .map_or("never".into(), |s| format!("{} ago", duration(Some(s)))),
            ]
        })
        .collect();
    let heads = [
        "ID",
        "PID",
        "VERSION",
        "STATE",
        "SERVED",
        "UPTIME",
        "RSS",
        "CPU",
        "LAST USED",
    ];
    let mut widths = heads.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&line(&heads.map(String::from)));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// `3d4h`, `2h05m`, `4m07s`, `12.3s`.
fn duration(secs: Option<f64>) -> String {
    let Some(secs) = secs else {
        return "-".into();
    };
    let s = secs as u64;
    match s {
        0..=59 => format!("{secs:.1}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Seconds to the millisecond.
fn millis(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Some(12.34)), "12.3s");
        assert_eq!(duration(Some(247.0)), "4m07s");
        assert_eq!(duration(Some(7500.0)), "2h05m");
        assert_eq!(duration(Some(3.0 * 86400.0 + 4.0 * 3600.0 + 5.0)), "3d4h");
        assert_eq!(duration(None), "-");
    }

    #[test]
    fn the_table_lines_up_its_columns() {
        let server = json!({
            "prefix": "rip_server2_hello", "pid": 7, "uptime_secs": 75.0, "state": "healthy",
            "version": 1, "joined": 2, "expected": 2,
            "queue": {"now": 0, "max": 3, "timeouts": 1, "full": 0},
            "workers": [
                {"id": 0, "pid": 11, "version": 1, "state": "idle", "served": 1500, "uptime_secs": 70.0,
                 "rss_bytes": 52428800u64, "cpu_secs": 1.5, "idle_secs": 0.25},
                {"id": 12, "pid": 130, "version": null, "state": "starting", "served": 0, "uptime_secs": 0.5,
                 "rss_bytes": 1048576u64, "cpu_secs": 0.01, "idle_secs": null},
            ],
        });
        let text = table(&server);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "rip_server2_hello  pid 7  up 1m15s  version 1  healthy  2/2 workers"
        );
        assert_eq!(
            lines[1],
            "queue: 0 now, 3 at most, 1 timed out, 0 turned away (full)"
        );
        assert_eq!(
            lines[2],
            "ID  PID  VERSION  STATE     SERVED  UPTIME  RSS       CPU     LAST USED"
        );
        assert_eq!(
            lines[3],
            "0   11   1        idle      1500    1m10s   50.0 MiB  1.50 s  0.2s ago"
        );
        assert_eq!(
            lines[4],
            "12  130  -        starting  0       0.5s    1.0 MiB   0.01 s  never"
        );
    }
}
