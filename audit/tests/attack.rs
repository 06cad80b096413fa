//! An independent review's attacks on cargo-pinned-audit: the binary run on
//! the `tests/fixtures/attack_*` crates (and a generated one). Tests named
//! `holds_*` pin behaviour that was checked and works; the others reproduce
//! a broken promise and fail until it is fixed.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn audit_dir(dir: &Path, extra: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pinned-audit"))
        .arg("pinned-audit")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("the audit binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn audit(name: &str, extra: &[&str]) -> Run {
    audit_dir(&fixture(name), extra)
}

fn json(name: &str) -> (Option<i32>, serde_json::Value) {
    let run = audit(name, &["--format", "json"]);
    let v = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {:?} stderr {}", run.stdout, run.stderr));
    (run.code, v)
}

/// "file:line:col rule chain-a > chain-b > .." for each finding.
fn found(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let l = &f["location"];
            let file = l["file"].as_str().unwrap().replace('\\', "/");
            let file = file
                .rsplit_once("/src/")
                .map(|x| x.1)
                .unwrap_or(&file)
                .to_string();
            let chain: Vec<&str> = f["chain"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["function"].as_str().unwrap())
                .collect();
            format!(
                "{file}:{}:{} {} {}",
                l["line"],
                l["column"],
                f["rule"].as_str().unwrap(),
                chain.join(" > ")
            )
        })
        .collect()
}

fn has_at(v: &serde_json::Value, file_line: &str) -> bool {
    found(v).iter().any(|f| f.starts_with(&format!("{file_line}:")))
}

// ---------------------------------------------------------------- held

#[test]
fn holds_reach_through_self_renames_mod_files_path_attr_impls_elsewhere_cycles() {
    let (code, v) = json("attack_reach");
    assert_eq!(code, Some(1));
    let f = found(&v);
    for want in [
        "lib.rs:14:17 owner-per-request Svc::case1_self_path > Svc::start > PinnedWorker::spawn",
        "lib.rs:23:13 owner-per-request case2_use_rename > PinnedWorker::spawn",
        "lib.rs:27:13 owner-per-request case3_module_rename > std::thread::spawn",
        "lib.rs:31:13 owner-per-request case4_fn_rename > std::thread::spawn",
        "nested/inner.rs:2:13 owner-per-request case5_mod_file > nested::inner::make > std::thread::spawn",
        "elsewhere/renamed.rs:2:13 owner-per-request case6_path_attr > renamed::make > std::thread::spawn",
        "lib.rs:49:21 owner-per-request case7_impl_elsewhere > other::Svc::from_other_module > std::thread::spawn",
        "lib.rs:55:16 owner-per-request case8_closure_var > std::thread::spawn",
        "lib.rs:79:13 owner-per-request case10_recursion > ping > pong > std::thread::spawn",
        "lib.rs:84:17 owner-per-request case11_inner_fn > helper > std::thread::spawn",
        "lib.rs:91:45 owner-per-request case12_builder_use > thread::Builder::new()..spawn",
        "lib.rs:108:24 owner-per-request case14_worker_spawn_on_owner > PinnedWorker::spawn",
        "lib.rs:113:13 owner-per-request case15_glob_use > PinnedWorker::spawn",
    ] {
        assert!(f.iter().any(|x| x == want), "missing {want}\n{f:#?}");
    }
}

#[test]
fn holds_handler_styles_and_spawned_fn_paths() {
    let (code, v) = json("attack_entries");
    assert_eq!(code, Some(1));
    for line in [
        "main.rs:6",
        "main.rs:12",
        "main.rs:24",
        "main.rs:28",
        "main.rs:33",
        "main.rs:42",
        "main.rs:46",
        "main.rs:50",
        "main.rs:55",
    ] {
        assert!(has_at(&v, line), "missing {line}: {:#?}", found(&v));
    }
}

#[test]
fn holds_actix_resource_to_route_to_and_full_path_attribute() {
    let (code, v) = json("attack_actix");
    assert_eq!(code, Some(1));
    assert_eq!(found(&v).len(), 3, "{:#?}", found(&v));
}

#[test]
fn holds_async_context_rules_and_good_code_stays_clean() {
    let (code, v) = json("attack_asyncctx");
    assert_eq!(code, Some(1));
    let f = found(&v);
    let lines: Vec<&str> = f.iter().map(|s| s.split(' ').next().unwrap()).collect();
    // bad1..bad8 (bad7, the glob import, since it was fixed); no GOOD
    // (spawn_blocking, call().await, `myffi::`, an unrelated `run`, on-owner affine call, awaited ticket, sync run).
    assert_eq!(
        lines,
        [
            "lib.rs:19:9",
            "lib.rs:25:28",
            "lib.rs:30:20",
            "lib.rs:36:7",
            "lib.rs:42:18",
            "lib.rs:49:5",
            "lib.rs:55:5",
            "lib.rs:64:19"
        ],
        "{f:#?}"
    );
}

#[test]
fn holds_good_service_with_startup_spawns_and_awaited_waits_is_clean() {
    let run = audit("attack_good", &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn holds_allow_comments_do_not_over_suppress() {
    // Trailing comment on the line above, comment above another statement,
    // above a struct, another rule, a string literal holding the text, a
    // blank line between, an inner statement's allow, an `if` above.
    let (code, v) = json("attack_allow");
    assert_eq!(code, Some(1));
    assert_eq!(found(&v).len(), 11, "{:#?}", found(&v));
    assert_eq!(v["suppressed"], 1);
}

#[test]
fn holds_columns_with_unicode_tabs_crlf_and_odd_syntax() {
    let (code, v) = json("attack_syntax");
    assert_eq!(code, Some(1));
    let f = found(&v);
    let lines: Vec<&str> = f.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(
        lines,
        [
            "crlf.rs:2:13",
            "lib.rs:16:32",
            "lib.rs:19:10",
            "lib.rs:25:29",
            "lib.rs:33:27",
            "lib.rs:40:18",
            "lib.rs:43:13"
        ],
        "{f:#?}"
    );
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn holds_missing_and_non_utf8_module_files_are_problems_with_status_2() {
    let (code, v) = json("attack_missing_mod");
    assert_eq!(code, Some(2));
    assert_eq!(v["problems"].as_array().unwrap().len(), 2);
    let (code, v) = json("attack_nonutf8");
    assert_eq!(code, Some(2));
    assert_eq!(v["problems"].as_array().unwrap().len(), 1);
    assert_eq!(v["findings"].as_array().unwrap().len(), 1);
    for args in [
        &["-p", "nope"][..],
        &["--format", "xml"],
        &["--bogus"],
        &["--config", "/nonexistent.toml"],
    ] {
        assert_eq!(audit("attack_nonutf8", args).code, Some(2), "{args:?}");
    }
}

#[test]
fn holds_config_constructors_renames_entry_points_worker_types_and_item_allows() {
    let (code, v) = json("attack_config");
    assert_eq!(code, Some(1));
    let f = found(&v);
    for line in ["lib.rs:16", "lib.rs:28", "lib.rs:37", "lib.rs:42"] {
        assert!(has_at(&v, line), "missing {line}: {f:#?}");
    }
    assert!(!has_at(&v, "lib.rs:22"), "the [[allow]] item is honoured");
    assert_eq!(v["suppressed"], 1);
}

#[test]
fn holds_long_chains_big_cycles_and_many_functions_terminate() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("attack_generated_deep");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"fx-attack_generated_deep\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    let n = 3000;
    let mut s = String::from("mod wide;\npub async fn entry() {\n    f0();\n}\n");
    for i in 0..n {
        s += &format!("fn f{i}() {{\n    f{}();\n}}\n", i + 1);
    }
    s += &format!("fn f{n}() {{\n    let _ = std::thread::spawn(|| 1);\n}}\n");
    s += "pub async fn ring() {\n    r0();\n}\n";
    for i in 0..n {
        s += &format!("fn r{i}() {{\n    r{}();\n}}\n", (i + 1) % n);
    }
    std::fs::write(dir.join("src/lib.rs"), s).unwrap();
    let mut w = String::new();
    let m = 5000;
    for i in 0..m {
        w += &format!(
            "pub fn w{i}(x: u32) -> u32 {{ if x > 0 {{ w{}(x - 1) + w{}(x / 2) }} else {{ x }} }}\n",
            (i + 1) % m,
            (i * 7) % m
        );
    }
    std::fs::write(dir.join("src/wide.rs"), w).unwrap();
    let run = audit_dir(&dir, &["--format", "json"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["findings"].as_array().unwrap().len(), 1);
    assert_eq!(v["findings"][0]["chain"].as_array().unwrap().len(), n + 3);
}

// ---------------------------------------------------------------- broken

/// Deeply nested expressions rustc compiles (1000 parentheses) overflow the
/// audit's stack: it aborts (SIGABRT, status 134) instead of reporting the
/// finding or a problem with status 2.
#[test]
fn deeply_nested_expression_does_not_crash_the_audit() {
    let run = audit("attack_nest", &[]);
    assert!(
        run.code == Some(1) || run.code == Some(2),
        "status {:?}; stderr tail: {}",
        run.code,
        &run.stderr[run.stderr.len().saturating_sub(300)..]
    );
}

/// `let task = async move { spawn }; tokio::spawn(task);` — an async block
/// given to tokio::spawn through a variable is not taken as a task entry.
#[test]
fn async_block_stored_in_a_variable_and_spawned_is_an_entry() {
    let (_, v) = json("attack_reach");
    assert!(has_at(&v, "lib.rs:61"), "case9 not reported: {:#?}", found(&v));
}

/// `let h = || async { .. }; .route("/c", get(h))` — a handler closure
/// registered through a variable is not an entry point.
#[test]
fn handler_closure_stored_in_a_variable_is_an_entry() {
    let (_, v) = json("attack_entries");
    assert!(
        has_at(&v, "main.rs:19"),
        "by_closure_var not reported: {:#?}",
        found(&v)
    );
}

/// A trait's default method called on a value of a known concrete type
/// (`let s = Svc; s.go_default()`) is not followed; this is neither a trait
/// object nor a generic, so the README's limits do not cover it.
#[test]
fn trait_default_method_on_a_known_type_is_followed() {
    let (_, v) = json("attack_reach");
    assert!(has_at(&v, "lib.rs:96"), "case13 not reported: {:#?}", found(&v));
}

/// `Self::create()` inside `impl sdk::Context` is not matched against the
/// configured constructor `sdk::Context::create` (`Self` is not expanded for
/// configured paths, though it is for the crate's own methods).
#[test]
fn self_path_to_a_configured_constructor_is_reported() {
    let (_, v) = json("attack_config");
    assert!(
        has_at(&v, "lib.rs:47"),
        "Self::create not reported: {:#?}",
        found(&v)
    );
}

/// `use crate::ffi::*; init();` — a glob-imported thread-affine function is
/// not matched against `thread-affine = ["ffi::"]`.
#[test]
fn glob_imported_thread_affine_call_is_reported() {
    let (_, v) = json("attack_asyncctx");
    assert!(has_at(&v, "lib.rs:55"), "bad7 not reported: {:#?}", found(&v));
}

/// The README says only `#[cfg(test)]` is skipped, but any `cfg` whose tokens
/// contain the word `test` is: `#[cfg(feature = "test-util")]` and
/// `#[cfg(any(test, feature = "mock"))]` production code passes with status 0.
#[test]
fn cfg_mentioning_test_in_a_feature_is_still_audited() {
    let (code, v) = json("attack_cfg");
    assert_eq!(code, Some(1), "{:#?}", found(&v));
    assert!(
        has_at(&v, "lib.rs:6") && has_at(&v, "lib.rs:12"),
        "{:#?}",
        found(&v)
    );
    assert!(!has_at(&v, "lib.rs:19"), "cfg(test) stays skipped");
}

/// With `--format json`, a configuration error prints nothing on stdout, so
/// a CI step that parses the JSON gets a parse error rather than the
/// README's "one object" with the problem in `problems`.
#[test]
fn json_output_is_an_object_even_on_a_configuration_error() {
    let run = audit("attack_bad_config_json", &["--format", "json"]);
    assert_eq!(run.code, Some(2));
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}; stderr {}",
            run.stdout, run.stderr
        )
    });
    assert!(!v["problems"].as_array().unwrap().is_empty());
}
