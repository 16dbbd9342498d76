//! The `rip-server` binary: parse the command line, set up logging, run the
//! role, and turn the outcome into an exit status (0 ok, 2 bad input, 1
//! failure). Everything else lives in the library (`src/lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    rip_server::run(std::env::args_os().collect())
}
