//! `cargo pinned-audit`: a static checker for Rust code that calls
//! thread-affine libraries through [pinned-ffi](https://crates.io/crates/pinned-ffi)
//! or by hand.
//!
//! Rust's own lints cannot say "this C call must stay on the thread that
//! made the context", so this crate parses a crate's sources with `syn`,
//! builds its call graph by name as far as syntax allows, and reports three
//! rules (see [`Rule`]):
//!
//! - [`Rule::OwnerPerRequest`]: an owner thread (`PinnedWorker::spawn`,
//!   `Pool::builder(..)..spawn`, `std::thread::spawn`, a configured
//!   thread-affine constructor) created in code that runs per request;
//! - [`Rule::AffineCallInAsync`]: a thread-affine function called directly in
//!   an `async` fn or block, where the task can change threads at every
//!   `.await`;
//! - [`Rule::BlockingInAsync`]: a blocking `run`/`wait` on a worker or pool
//!   in async code, where the async form exists.
//!
//! The binary wraps [`audit`]; the library can be used the same way from a
//! build tool or a test:
//!
//! ```no_run
//! let options = pinned_audit::Options::default();
//! let report = pinned_audit::audit(&options).expect("cargo metadata ran");
//! for finding in &report.findings {
//!     eprintln!("{}: {}", finding.rule, finding.message);
//! }
//! ```
//!
//! What it cannot see is listed in the crate's README ("Limits"): macros it
//! does not expand, calls through trait objects and generics, calls across
//! crates, and method calls on receivers whose type it cannot name.

mod analyze;
pub mod config;
mod load;
pub mod render;
mod scan;

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use config::Config;

/// One of the checks the audit makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// An owner thread or thread-affine context created in code that runs
    /// once per request.
    OwnerPerRequest,
    /// A thread-affine function called directly from async code.
    AffineCallInAsync,
    /// A blocking `run`/`wait` on a worker or pool from async code.
    BlockingInAsync,
}

impl Rule {
    /// Every rule, in report order.
    pub const ALL: [Rule; 3] = [
        Rule::OwnerPerRequest,
        Rule::AffineCallInAsync,
        Rule::BlockingInAsync,
    ];

    /// The rule's name as written in allow comments, configuration and output.
    pub fn name(self) -> &'static str {
        match self {
            Rule::OwnerPerRequest => "owner-per-request",
            Rule::AffineCallInAsync => "affine-call-in-async",
            Rule::BlockingInAsync => "blocking-in-async",
        }
    }

    /// The rule with this name, if there is one.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The help line printed with each finding of this rule.
    pub fn help(self) -> &'static str {
        match self {
            Rule::OwnerPerRequest => {
                "create the worker or pool once at start-up and share it (an `Arc` in the router's state); \
                 send each request's work to it with `call(..).await` or `run(..)`"
            }
            Rule::AffineCallInAsync => {
                "move the call onto the owner thread: `worker.call(move |ctx| ..).await` \
                 (the context never leaves that thread)"
            }
            Rule::BlockingInAsync => {
                "use the async form: `.call(..).await` for `run`, `.call_deadline(..).await` for \
                 `run_deadline`, `submit_async(..).await?.await` or `ticket.await` for `submit(..).wait()`"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A place in a source file: 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Location {
    /// The file, as cargo metadata and `mod` declarations lead to it.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            render::display_path(&self.file),
            self.line,
            self.column
        )
    }
}

/// One step of the call chain from a per-request entry point to a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainStep {
    /// The function or closure, e.g. `handlers::create` or
    /// `closure passed to tokio::spawn in serve`.
    pub function: String,
    /// Why the first step is an entry point, or how the step was reached.
    pub note: String,
    /// Where the step is: the entry's definition, or the call that reached it.
    pub location: Location,
}

/// One problem the audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule that fired.
    pub rule: Rule,
    /// The package whose sources hold the finding.
    pub package: String,
    /// What is wrong, in one sentence.
    pub message: String,
    /// The flagged expression.
    pub location: Location,
    /// From the entry point (or the enclosing async code) to the flagged line.
    pub chain: Vec<ChainStep>,
    /// How to fix it.
    pub help: String,
}

/// A problem that stopped part of the audit: a file that does not parse, a
/// module file that is missing, a bad allow comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file, when the problem is in one.
    pub file: Option<PathBuf>,
    /// Where in the file, when known.
    pub line: Option<usize>,
    /// Where in the line, when known.
    pub column: Option<usize>,
    /// What went wrong.
    pub message: String,
}

/// Everything one audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Findings, sorted by file and position.
    pub findings: Vec<Finding>,
    /// Files skipped and other problems; any of them makes the exit status 2.
    pub problems: Vec<Problem>,
    /// The packages audited.
    pub packages: Vec<String>,
    /// How many source files were parsed.
    pub files: usize,
    /// How many findings allow comments or configuration suppressed.
    pub suppressed: usize,
}

impl Report {
    /// The process exit status for this report: 2 with problems, 1 with
    /// findings, 0 when clean.
    pub fn exit_code(&self) -> i32 {
        if !self.problems.is_empty() {
            2
        } else if !self.findings.is_empty() {
            1
        } else {
            0
        }
    }
}

/// What to audit and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The `Cargo.toml` to start from (default: cargo's own search from the
    /// current directory).
    pub manifest_path: Option<PathBuf>,
    /// Packages to audit, by name (default: every workspace member).
    pub packages: Vec<String>,
    /// Also audit test and bench targets and `#[cfg(test)]` code.
    pub include_tests: bool,
    /// An extra configuration file, read after the workspace's and the
    /// packages' own.
    pub config_file: Option<PathBuf>,
}

/// An error that stopped the audit before it could report anything.
#[derive(Debug)]
pub enum Error {
    /// `cargo metadata` could not run or its output could not be read.
    Metadata(String),
    /// A configuration file or table is malformed.
    Config(String),
    /// A package named with `-p` is not in the workspace.
    UnknownPackage(String),
    /// The audit itself failed (its worker thread could not start or panicked).
    Internal(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Metadata(m) => write!(f, "cargo metadata: {m}"),
            Error::Config(m) => write!(f, "configuration: {m}"),
            Error::UnknownPackage(p) => write!(f, "package `{p}` is not a member of the workspace"),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// The stack of the thread that parses and analyses the sources.
const AUDIT_STACK: usize = 256 << 20;

/// Runs `cargo metadata`, reads the configuration, parses every audited
/// target's sources and applies the rules.
pub fn audit(options: &Options) -> Result<Report, Error> {
    let workspace = load::metadata(options.manifest_path.as_deref())?;
    let selected: Vec<&load::Package> = if options.packages.is_empty() {
        workspace.packages.iter().collect()
    } else {
        let mut v = Vec::new();
        for name in &options.packages {
            match workspace.packages.iter().find(|p| &p.name == name) {
                Some(p) => v.push(p),
                None => return Err(Error::UnknownPackage(name.clone())),
            }
        }
        v
    };
    let base = config::workspace_config(&workspace)?;
    let extra = match &options.config_file {
        Some(path) => Some(config::read_file(path)?),
        None => None,
    };
    let mut jobs = Vec::new();
    for package in selected {
        let mut config = base.clone();
        config.merge(config::package_config(package)?);
        if let Some(extra) = &extra {
            config.merge(extra.clone());
        }
        jobs.push((package, config));
    }
    // Parsing and the visitors recurse with the syntax tree: deeply nested
    // expressions rustc accepts need more than a main thread's stack. The
    // visitors also stop at `scan::MAX_DEPTH` and report the file.
    let include_tests = options.include_tests;
    let mut report = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("pinned-audit".into())
            .stack_size(AUDIT_STACK)
            .spawn_scoped(scope, move || {
                let mut report = Report::default();
                for (package, config) in jobs {
                    let crate_graph = scan::scan_package(package, include_tests, &mut report.problems);
                    report.files += crate_graph.files.len();
                    report.packages.push(package.name.clone());
                    analyze::run(&package.name, &crate_graph, &config, &mut report);
                }
                report
            })
            .map_err(|e| Error::Internal(format!("could not start the audit thread: {e}")))?
            .join()
            .map_err(|_| Error::Internal("the audit thread panicked".to_string()))
    })?;
    report
        .findings
        .sort_by(|a, b| (&a.location, a.rule).cmp(&(&b.location, b.rule)));
    report
        .findings
        .dedup_by(|a, b| a.location == b.location && a.rule == b.rule);
    Ok(report)
}
