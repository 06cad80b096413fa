//! The binary run on the fixture crates under `tests/fixtures/`: every rule,
//! reach through functions, methods and closures, each handler style, allow
//! comments at both levels, configuration, JSON output and exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn audit(name: &str, extra: &[&str]) -> Run {
    let manifest = fixture(name).join("Cargo.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pinned-audit"))
        // As cargo runs a subcommand: the subcommand's name comes first.
        .arg("pinned-audit")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(extra)
        .current_dir(fixture(name))
        .output()
        .expect("the audit binary runs");
    Run {
        code: out.status.code().expect("exited"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn json(name: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let run = audit(name, &args);
    let value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    (run.code, value)
}

/// (rule, "file:line:col") for each finding, in report order.
fn findings(v: &serde_json::Value) -> Vec<(String, String)> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let l = &f["location"];
            let file = l["file"].as_str().unwrap().replace('\\', "/");
            let file = file.split("/fixtures/").nth(1).unwrap().to_string();
            let file = file.split_once('/').unwrap().1.to_string();
            (
                f["rule"].as_str().unwrap().to_string(),
                format!("{file}:{}:{}", l["line"], l["column"]),
            )
        })
        .collect()
}

fn chain(v: &serde_json::Value, i: usize) -> Vec<String> {
    v["findings"][i]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["function"].as_str().unwrap().to_string())
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn axum_handler_spawning_owners_fails_with_chains() {
    let run = audit("owner_axum", &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    // rustc-style: rule, position, source line, chain, help.
    assert!(run
        .stderr
        .contains("error[owner-per-request]: `PinnedWorker::spawn` starts an owner thread"));
    assert!(run.stderr.contains("--> src/main.rs:30:5"), "{}", run.stderr);
    assert!(run
        .stderr
        .contains("30 |     PinnedWorker::spawn(|| Ok::<_, ()>(1)).unwrap()"));
    assert!(run
        .stderr
        .contains("`create` at src/main.rs:38:10: HTTP handler registered with `post(..)`"));
    assert!(run
        .stderr
        .contains("-> `make_worker` at src/main.rs:39:13: called from `create`"));
    assert!(run
        .stderr
        .contains("= help: create the worker or pool once at start-up"));
    assert!(run.stderr.contains("pinned-audit: 3 finding(s), 0 problem(s)"));

    let (code, v) = json("owner_axum", &[]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("owner-per-request", "src/main.rs:24:61"),
            ("owner-per-request", "src/main.rs:30:5"),
            ("owner-per-request", "src/main.rs:34:5"),
        ])
    );
    // Methods on known types: the state's field, then `self`.
    assert_eq!(
        chain(&v, 0),
        [
            "upload",
            "Service::handle",
            "Service::start",
            "Pool::builder(..)..spawn"
        ]
    );
    assert_eq!(chain(&v, 1), ["create", "make_worker", "PinnedWorker::spawn"]);
    // Through a closure passed to `map`.
    assert_eq!(chain(&v, 2), ["batch", "spawn_one", "std::thread::spawn"]);
}

#[test]
fn allow_comments_on_the_line_and_the_item_make_it_pass() {
    let run = audit("owner_allowed", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("0 finding(s), 0 problem(s), 2 allowed"),
        "{}",
        run.stderr
    );
}

#[test]
fn actix_attributes_request_parameters_and_spawned_tasks_are_entries() {
    let (code, v) = json("actix", &[]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("owner-per-request", "src/lib.rs:10:57"),
            ("owner-per-request", "src/lib.rs:17:60"),
            ("owner-per-request", "src/lib.rs:23:37"),
        ])
    );
    let notes: Vec<&str> = (0..3)
        .map(|i| v["findings"][i]["chain"][0]["note"].as_str().unwrap())
        .collect();
    assert_eq!(
        notes,
        [
            "HTTP handler (`#[post]` attribute)",
            "HTTP handler (takes a `HttpRequest`)",
            "task passed to `tokio::spawn`"
        ]
    );
    assert_eq!(chain(&v, 2)[0], "closure passed to tokio::spawn in accept_loop");
}

#[test]
fn mod_files_use_imports_super_and_path_attributes_are_followed() {
    let (code, v) = json("modules", &[]);
    assert_eq!(code, 1);
    assert_eq!(v["files"], 6);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("owner-per-request", "src/engine.rs:13:17"),
            ("owner-per-request", "src/extra/odd_name.rs:5:37"),
            ("owner-per-request", "src/lib.rs:12:13"),
            ("owner-per-request", "src/net/mod.rs:7:30"),
        ])
    );
    assert_eq!(
        chain(&v, 0),
        ["entry", "engine::Engine::boot", "PinnedWorker::spawn"]
    );
    assert_eq!(
        chain(&v, 1),
        ["entry", "odd::make", "PinnedWorker::builder()..spawn"]
    );
    assert_eq!(
        chain(&v, 3),
        [
            "entry",
            "net::http::serve",
            "net::http::helpers::spawn_worker",
            "net::pool_of_one",
            "Pool::builder(..)..spawn"
        ]
    );
}

#[test]
fn affine_calls_in_async_code_are_flagged_but_not_inside_owner_closures() {
    let (code, v) = json("affine_async", &[]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("affine-call-in-async", "src/lib.rs:23:24"),
            ("affine-call-in-async", "src/lib.rs:25:14"),
            ("affine-call-in-async", "src/lib.rs:30:22"),
        ])
    );
    assert_eq!(v["suppressed"], 1);
    let help = v["findings"][0]["help"].as_str().unwrap();
    assert!(help.contains("worker.call(move |ctx|"), "{help}");
}

#[test]
fn blocking_run_and_wait_in_async_code_are_flagged() {
    let (code, v) = json("blocking_async", &[]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("blocking-in-async", "src/lib.rs:14:19"),
            ("blocking-in-async", "src/lib.rs:25:12"),
            ("blocking-in-async", "src/lib.rs:30:44"),
            ("blocking-in-async", "src/lib.rs:32:11"),
            ("blocking-in-async", "src/lib.rs:37:29"),
        ])
    );
    let messages: Vec<&str> = (0..5)
        .map(|i| v["findings"][i]["message"].as_str().unwrap())
        .collect();
    assert!(messages[0].contains("on a `Pool`"));
    assert!(messages[2].contains("ticket"));
    assert!(messages[4].contains("on a `Route`"));
}

#[test]
fn configuration_file_adds_constructors_entry_points_allows_and_switches() {
    let (code, v) = json("config_toml", &[]);
    assert_eq!(code, 1);
    assert_eq!(findings(&v), pairs(&[("owner-per-request", "src/lib.rs:22:24")]));
    assert_eq!(chain(&v, 0), ["server::Conn::serve", "sdk::Context::create"]);
    assert_eq!(
        v["findings"][0]["chain"][0]["note"],
        "entry point named in the configuration"
    );
    // warm_up is allowed in the file; the blocking run is under a rule
    // switched off.
    assert_eq!(v["suppressed"], 1);

    // The rule switched back on by a later --config layer.
    let extra = std::env::temp_dir().join(format!("pinned-audit-extra-{}.toml", std::process::id()));
    std::fs::write(&extra, "[rules]\nblocking-in-async = true\n").unwrap();
    let (code, v) = json("config_toml", &["--config", extra.to_str().unwrap()]);
    std::fs::remove_file(&extra).ok();
    assert_eq!(code, 1);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("owner-per-request", "src/lib.rs:22:24"),
            ("blocking-in-async", "src/lib.rs:34:16")
        ])
    );
}

#[test]
fn a_bad_configuration_exits_2_with_a_clear_message() {
    let run = audit("bad_config", &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("unknown field `thread-afine`, expected one of `thread-affine`"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_file_that_does_not_parse_is_reported_skipped_and_exits_2() {
    let run = audit("parse_error", &[]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("does not parse"), "{}", run.stderr);
    assert!(run.stderr.contains("--> src/broken.rs:2:"), "{}", run.stderr);
    // The rest of the crate is still checked.
    assert!(run.stderr.contains("error[owner-per-request]"));
    let (code, v) = json("parse_error", &[]);
    assert_eq!(code, 2);
    assert_eq!(v["problems"].as_array().unwrap().len(), 1);
    assert_eq!(findings(&v).len(), 1);
}

#[test]
fn clean_code_exits_0() {
    let run = audit("clean", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("0 finding(s), 0 problem(s), 0 allowed"));
    let (code, v) = json("clean", &[]);
    assert_eq!(code, 0);
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    assert_eq!(v["packages"][0], "fx-clean");
}

#[test]
fn documented_blind_spots_stay_unreported() {
    // Macros, trait objects, other crates, unnamed receiver types: see the
    // README's "Limits". If one of these starts being reported, update it.
    let (code, v) = json("limits", &[]);
    assert_eq!(code, 0, "{v}");
}

#[test]
fn tests_and_cfg_test_code_only_with_the_tests_flag() {
    assert_eq!(audit("with_tests", &[]).code, 0);
    let (code, v) = json("with_tests", &["--tests"]);
    assert_eq!(code, 1);
    assert_eq!(
        findings(&v),
        pairs(&[
            ("owner-per-request", "src/lib.rs:9:17"),
            ("owner-per-request", "tests/common/mod.rs:3:13"),
            ("owner-per-request", "tests/many.rs:6:17"),
        ])
    );
    // A module shared by two test targets is read for each of them.
    assert_eq!(chain(&v, 1)[1], "common::start");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let bin = env!("CARGO_BIN_EXE_cargo-pinned-audit");
    let out = Command::new(bin)
        .args(["pinned-audit", "--frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument `--frobnicate`"));
    let out = Command::new(bin).args(["--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: cargo pinned-audit"));
    let out = Command::new(bin)
        .args(["--manifest-path", "/nonexistent/Cargo.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo metadata"));
}

#[test]
fn a_misspelt_allow_is_an_error_and_suppresses_nothing() {
    let (code, v) = json("bad_allow", &[]);
    assert_eq!(code, 2);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["line"], 6);
    assert!(problems[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown rule `owner-per-reqest`"));
    assert_eq!(findings(&v), pairs(&[("owner-per-request", "src/lib.rs:7:13")]));
}
