//! What `/proc` says about processes: parent, resident memory, CPU time
//! and age — for `rip-server status` and for `--max-memory`, which count a
//! worker with its app (its whole process tree).

use std::collections::HashMap;

/// A process, as `/proc/<pid>/stat` and `statm` describe it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub ppid: u32,
    pub rss_bytes: u64,
    pub cpu_secs: f64,
    pub age_secs: f64,
}

/// Every process this one may read, by pid.
pub type Table = HashMap<u32, Proc>;

/// A snapshot of `/proc`.
pub fn table() -> Table {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let mut table = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return table;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(process) = read(pid, tick, page, uptime) {
            table.insert(pid, process);
        }
    }
    table
}

fn read(pid: u32, tick: f64, page: u64, uptime: f64) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // From the state on; proc_pid_stat(5) numbers the fields from 1 with
    // the pid and the name first: ppid is its 4, utime 14, stime 15,
    // starttime 22.
    let resident: u64 = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|m| m.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    Some(Proc {
        ppid: field(1) as u32,
        rss_bytes: resident * page,
        cpu_secs: (field(11) + field(12)) / tick,
        age_secs: (uptime - field(19) / tick).max(0.0),
    })
}

/// `pid` and its descendants.
pub fn tree(pid: u32, table: &Table) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            table
                .iter()
                .filter(|(_, p)| p.ppid == parent)
                .map(|(&c, _)| c),
        );
        i += 1;
    }
    all
}

/// What `pid` and its descendants hold together: resident memory, in
/// bytes, and CPU time, in seconds.
pub fn tree_totals(pid: u32, table: &Table) -> (u64, f64) {
    tree(pid, table)
        .iter()
        .filter_map(|p| table.get(p))
        .fold((0, 0.0), |(rss, cpu), p| {
            (rss + p.rss_bytes, cpu + p.cpu_secs)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_holds_a_child_and_its_memory() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let table = table();
        let me = std::process::id();
        assert!(tree(me, &table).contains(&child.id()));
        assert!(tree_totals(me, &table).0 > table[&me].rss_bytes);
        assert!(table[&me].age_secs >= 0.0 && table[&me].cpu_secs > 0.0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
