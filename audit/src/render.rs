//! Output: rustc-style diagnostics for people, JSON for machines.

use std::fmt::Write as _;
use std::path::Path;

use crate::{Finding, Problem, Report};

/// A path as diagnostics show it: relative to the current directory when
/// it lies below it, as given otherwise.
pub fn display_path(path: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    path.display().to_string()
}

fn source_line(path: &Path, line: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().nth(line.checked_sub(1)?).map(str::to_string)
}

fn finding(out: &mut String, f: &Finding) {
    let _ = writeln!(out, "error[{}]: {}", f.rule, f.message);
    let gutter = " ".repeat(f.location.line.to_string().len());
    let _ = writeln!(out, "{gutter}--> {}", f.location);
    if let Some(src) = source_line(&f.location.file, f.location.line) {
        let caret_pad: String = src
            .chars()
            .take(f.location.column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let _ = writeln!(out, "{gutter} |");
        let _ = writeln!(out, "{} | {src}", f.location.line);
        let _ = writeln!(out, "{gutter} | {caret_pad}^");
    }
    let _ = writeln!(out, "{gutter} = note: call chain, from the entry point:");
    for (i, step) in f.chain.iter().enumerate() {
        let arrow = if i == 0 { "   " } else { "-> " };
        let _ = writeln!(
            out,
            "{gutter}         {arrow}`{}` at {}: {}",
            step.function, step.location, step.note
        );
    }
    let _ = writeln!(out, "{gutter} = help: {}", f.help);
    let _ = writeln!(
        out,
        "{gutter} = note: or allow it with a reason: `// pinned-audit: allow({})` on the line or the enclosing item",
        f.rule
    );
    out.push('\n');
}

fn problem(out: &mut String, p: &Problem) {
    let _ = writeln!(out, "error: {}", p.message);
    if let Some(file) = &p.file {
        match (p.line, p.column) {
            (Some(l), Some(c)) => {
                let _ = writeln!(out, "  --> {}:{l}:{c}", display_path(file));
            }
            (Some(l), None) => {
                let _ = writeln!(out, "  --> {}:{l}", display_path(file));
            }
            _ => {
                let _ = writeln!(out, "  --> {}", display_path(file));
            }
        }
    }
    out.push('\n');
}

/// The report as rustc-style diagnostics, ending in a summary line.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    for p in &report.problems {
        problem(&mut out, p);
    }
    for f in &report.findings {
        finding(&mut out, f);
    }
    let _ = writeln!(
        out,
        "pinned-audit: {} finding(s), {} problem(s), {} allowed; {} file(s) in {} package(s)",
        report.findings.len(),
        report.problems.len(),
        report.suppressed,
        report.files,
        report.packages.len()
    );
    out
}

/// The report as one JSON object: `findings`, `problems`, `packages`,
/// `files`, `suppressed`.
pub fn json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}
