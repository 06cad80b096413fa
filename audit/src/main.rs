//! `cargo pinned-audit`: the command line around [`pinned_audit::audit`].
//!
//! Exit status: 0 when clean, 1 with findings, 2 on a usage, metadata,
//! configuration or parse error.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
Usage: cargo pinned-audit [OPTIONS]

Checks Rust code that calls thread-affine libraries for owner threads
created per request, thread-affine calls in async code, and blocking
worker calls in async code.

Options:
      --manifest-path <PATH>  Cargo.toml of the crate or workspace to audit
  -p, --package <NAME>        audit only this workspace member (repeatable)
      --tests                 also audit tests, benches and #[cfg(test)] code
      --format <FORMAT>       human (default, on stderr) or json (on stdout)
      --config <PATH>         an extra pinned-audit.toml, read last
  -h, --help                  print this help
  -V, --version               print the version

Suppress a finding with `// pinned-audit: allow(<rule>) <reason>` on its
line, the line above, or the enclosing item. Rules: owner-per-request,
affine-call-in-async, blocking-in-async.

Exit status: 0 clean, 1 findings, 2 parse, configuration or usage error.";

enum Format {
    Human,
    Json,
}

fn parse_args(mut args: Vec<String>) -> Result<Option<(pinned_audit::Options, Format)>, String> {
    // As a cargo subcommand we are run as `cargo-pinned-audit pinned-audit ..`.
    if args.first().map(String::as_str) == Some("pinned-audit") {
        args.remove(0);
    }
    let mut options = pinned_audit::Options::default();
    let mut format = Format::Human;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("`{name}` needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("cargo-pinned-audit {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--manifest-path" => options.manifest_path = Some(PathBuf::from(value("--manifest-path")?)),
            "-p" | "--package" => options.packages.push(value("--package")?),
            "--tests" => options.include_tests = true,
            "--config" => options.config_file = Some(PathBuf::from(value("--config")?)),
            "--format" => {
                format = match value("--format")?.as_str() {
                    "human" => Format::Human,
                    "json" => Format::Json,
                    other => return Err(format!("unknown format `{other}`; use `human` or `json`")),
                }
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some((options, format)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (options, format) = match parse_args(args) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let report = match pinned_audit::audit(&options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            if let Format::Json = format {
                // Still one JSON object, with the error as its problem.
                let report = pinned_audit::Report {
                    problems: vec![pinned_audit::Problem {
                        file: None,
                        line: None,
                        column: None,
                        message: e.to_string(),
                    }],
                    ..Default::default()
                };
                print!("{}", pinned_audit::render::json(&report));
            }
            return ExitCode::from(2);
        }
    };
    match format {
        Format::Human => eprint!("{}", pinned_audit::render::human(&report)),
        Format::Json => {
            print!("{}", pinned_audit::render::json(&report));
            for p in &report.problems {
                eprintln!("error: {}", p.message);
            }
        }
    }
    ExitCode::from(report.exit_code() as u8)
}
