//! Tells the tests whether they are built as root (`cfg(as_root)`): one
//! control-socket test acts as another user, which only root can do; it is
//! ignored, with that reason, otherwise.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(as_root)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=USER");
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(2)?.parse::<u32>().ok()
        });
    if uid == Some(0) {
        println!("cargo::rustc-cfg=as_root");
    }
}
