//! `rip-server ca:<command>`: the development CA behind `https:ca` and
//! `https:smart`, under `$RIP_HOME` (else `~/.rip-server`): `ca/root.crt`,
//! `ca/root.key` and the certificates it issued, `certs/<name>.crt|.key`.

use std::path::{Path, PathBuf};

use crate::certs::{self, Home};
use crate::Failure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Make the CA unless it exists.
    Init,
    /// Install the CA's certificate where this system trusts it.
    Trust,
    /// Copy the CA's certificate to `./rip-server-ca.crt`.
    Export,
    /// The CA's subject, validity and fingerprint.
    Info,
    /// The certificates it issued.
    List,
    /// Remove the CA and what it issued.
    Clean,
}

impl Command {
    pub const NAMES: &'static str = "init, trust, export, info, list, clean";

    pub fn parse(name: &str) -> Result<Command, String> {
        Ok(match name {
            "init" => Command::Init,
            "trust" => Command::Trust,
            "export" => Command::Export,
            "info" => Command::Info,
            "list" => Command::List,
            "clean" => Command::Clean,
            _ => {
                return Err(format!(
                    "ca:{name}: not a CA command (ca:{})",
                    Command::NAMES.replace(", ", ", ca:")
                ))
            }
        })
    }
}

/// The name the CA is installed under in a system store.
const TRUST_NAME: &str = "rip-server-development-ca.crt";

pub fn run(command: Command, home: &Home) -> Result<(), Failure> {
    let ca = home.ca();
    let missing = || {
        Failure::Silent(print_err(&format!(
            "no development CA at {} (make it: rip-server ca:init)",
            ca.cert.display()
        )))
    };
    match command {
        Command::Init => {
            let made = home.init_ca().map_err(Failure::Usage)?;
            println!(
                "{} {}",
                if made { "made" } else { "kept the existing" },
                ca.cert.display()
            );
            info(&ca.cert)
        }
        Command::Info => {
            if !ca.cert.exists() {
                return Err(missing());
            }
            info(&ca.cert)
        }
        Command::Export => {
            if !ca.cert.exists() {
                return Err(missing());
            }
            let to = PathBuf::from("rip-server-ca.crt");
            std::fs::copy(&ca.cert, &to)
                .map_err(|e| Failure::fatal(format!("cannot write {}: {e}", to.display())))?;
            println!(
                "wrote {} (the CA's certificate; its key stays in {})",
                to.display(),
                ca.key.display()
            );
            Ok(())
        }
        Command::List => {
            let dir = home.0.join("certs");
            let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            names.retain(|p| p.extension().is_some_and(|e| e == "crt"));
            names.sort();
            if names.is_empty() {
                println!("no certificates in {}", dir.display());
            }
            for path in names {
                match certs::read_chain(&path).and_then(|c| certs::Info::parse(&c[0])) {
                    Ok(i) => println!(
                        "{}  {}  until {}",
                        path.display(),
                        i.names.join(","),
                        certs::date(i.not_after)
                    ),
                    Err(why) => println!("{}  unreadable: {why}", path.display()),
                }
            }
            Ok(())
        }
        Command::Clean => {
            for dir in [home.0.join("ca"), home.0.join("certs")] {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => println!("removed {}", dir.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Failure::fatal(format!(
                            "cannot remove {}: {e}",
                            dir.display()
                        )))
                    }
                }
            }
            Ok(())
        }
        Command::Trust => {
            if !ca.cert.exists() {
                return Err(missing());
            }
            trust(&ca.cert)
        }
    }
}

fn print_err(line: &str) -> u8 {
    eprintln!("rip-server: {line}");
    1
}

fn info(cert: &Path) -> Result<(), Failure> {
    let chain = certs::read_chain(cert).map_err(Failure::fatal)?;
    let i = certs::Info::parse(&chain[0]).map_err(Failure::fatal)?;
    println!("subject:     {}", i.subject);
    println!(
        "valid:       {} to {}",
        certs::date(i.not_before),
        certs::date(i.not_after)
    );
    println!("serial:      {}", i.serial);
    println!("sha256:      {}", certs::fingerprint(&chain[0]));
    Ok(())
}

/// Installs `cert` into the system's trust store where it can; otherwise
/// prints the command that would.
fn trust(cert: &Path) -> Result<(), Failure> {
    let shown = cert.display();
    if cfg!(target_os = "macos") {
        let command = format!(
            "sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {shown}"
        );
        return run_or_print(&command);
    }
    let store = Path::new("/usr/local/share/ca-certificates");
    if store.is_dir() && which("update-ca-certificates") {
        let to = store.join(TRUST_NAME);
        let command = format!(
            "sudo cp {shown} {} && sudo update-ca-certificates",
            to.display()
        );
        if nix::unistd::geteuid().is_root() {
            std::fs::copy(cert, &to)
                .map_err(|e| Failure::fatal(format!("cannot write {}: {e}", to.display())))?;
            let status = std::process::Command::new("update-ca-certificates")
                .status()
                .map_err(|e| Failure::fatal(format!("update-ca-certificates: {e}")))?;
            if !status.success() {
                return Err(Failure::fatal(format!(
                    "update-ca-certificates failed ({status})"
                )));
            }
            println!("trusted: {} (update-ca-certificates)", to.display());
            println!("browsers with their own store (Firefox) need it imported there too");
            return Ok(());
        }
        return run_or_print(&command);
    }
    run_or_print(&format!(
        "# add {shown} to this system's trusted certificate authorities"
    ))
}

fn run_or_print(command: &str) -> Result<(), Failure> {
    println!("to trust the development CA, run:\n  {command}");
    Ok(())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(program).is_file())
    })
}
