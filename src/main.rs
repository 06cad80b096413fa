//! `cargo run --release`: shows why thread-affine C libraries need a single
//! owner (wrong results from raw calls) and what the owner costs per call.
//!
//! Options: `--quick` (a few seconds), `--no-busy` (skip the busy-machine
//! section, which loads every core for up to 30 s quick, 2 min full),
//! `--json FILE`, `--svg FILE`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use pinned_ffi_demo::real_sdks;
use pinned_ffi_demo::report::{self, Mode};

fn main() -> ExitCode {
    let mut mode = Mode::Full;
    let mut busy = true;
    let (mut json, mut svg) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => mode = Mode::Quick,
            "--no-busy" => busy = false,
            "--json" | "--svg" => {
                let Some(path) = args.next() else {
                    eprintln!("{a} needs a file name");
                    return ExitCode::from(2);
                };
                if a == "--json" {
                    json = Some(path);
                } else {
                    svg = Some(path);
                }
            }
            "-h" | "--help" => {
                println!("usage: pinned-ffi-demo [--quick] [--no-busy] [--json FILE] [--svg FILE]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}; try --help");
                return ExitCode::from(2);
            }
        }
    }
    if cfg!(debug_assertions) {
        eprintln!("note: a debug build; run with --release for meaningful figures");
    }
    let tty = std::io::stderr().is_terminal();
    let progress = |step: &str| {
        if tty {
            eprint!("\r\x1b[2K  running: {step}");
            let _ = std::io::stderr().flush();
        }
    };
    let report = report::run(mode, busy, progress);
    let real = real_sdks::run(mode, progress);
    if tty {
        eprint!("\r\x1b[2K");
    }
    print!("{}", report.table());
    print!("{}", real.table());
    for (path, body) in [(json, report.json()), (svg, report.svg())] {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(&path, body) {
                eprintln!("cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {path}");
        }
    }
    ExitCode::SUCCESS
}
