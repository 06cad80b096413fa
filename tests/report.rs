//! The report's pieces: queue-latency rows, and the JSON and SVG renderings
//! of a report (shapes a reader or a script relies on).

use pinned_ffi_demo::report::{queue_latency, Machine, Report, Row};
use pinned_ffi_demo::scenarios::Outcome;

#[test]
fn queue_latency_has_a_row_per_case_with_samples() {
    // Enough calls that each of the 64 callers has timed jobs (one in
    // TIMED_ONE_JOB_IN per calling thread).
    let rows = queue_latency(64 * 4 * u64::from(pinned_ffi::TIMED_ONE_JOB_IN));
    assert_eq!(
        rows.iter().map(|r| r.callers).collect::<Vec<_>>(),
        vec![1, 4, 16, 64, 4, 4]
    );
    assert!(rows[4].idle_owners > 0 && rows[5].idle_owners > rows[4].idle_owners);
    for r in &rows {
        assert!(r.samples > 0, "{r:?}");
        assert!(r.p50 <= r.p99, "{r:?}");
    }
}

#[test]
fn json_and_svg_carry_every_row() {
    let report = Report {
        machine: Machine {
            cpu: "Test \"CPU\"".into(),
            cpus: 2,
            kernel: "6.0".into(),
        },
        scenarios: vec![Outcome {
            name: "raw".into(),
            calls: 10,
            wrong: 9,
            lost_errors: 1,
            failed_calls: 2,
            contexts: 4,
        }],
        rows: vec![
            Row {
                name: "direct".into(),
                ns_per_call: 10.0,
                ratio_to_direct: 1.0,
                contexts_created: 1,
                os_threads: 0,
                wrong_results: Some(0),
            },
            Row {
                name: "a <b> & c".into(),
                ns_per_call: 1e6,
                ratio_to_direct: 1e5,
                contexts_created: 100,
                os_threads: 100,
                wrong_results: None,
            },
        ],
        queue_latency: vec![],
        idle_cpu_percent: Some(0.01),
        busy: None,
    };
    let json = report.json();
    for needle in [
        r#""machine": {"cpu": "Test \"CPU\"", "cpus": 2"#,
        r#""strategies": [{"name": "direct", "ns_per_call": 10.00, "ratio_to_direct": 1.000, "contexts_created": 1, "os_threads": 0, "wrong_results": 0}"#,
        r#""wrong_results": null}"#,
        r#""idle_worker_cpu_percent": 0.0100, "busy": null}"#,
    ] {
        assert!(json.contains(needle), "{needle} not in {json}");
    }
    let svg = report.svg();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("a &lt;b&gt; &amp; c"), "names are escaped");
    assert_eq!(svg.matches("<rect x=").count(), 2, "one bar per strategy");
    let table = report.table();
    assert!(table.contains("raw") && table.contains("1.00 ms"), "{table}");
}

#[test]
fn the_busy_section_measures_each_row_under_hogs_in_bounded_time() {
    use pinned_ffi_demo::busy;
    use pinned_ffi_demo::report::Mode;
    use pinned_ffi_demo::strategies::Strategy;
    let list = [Strategy::Pinned, Strategy::CrossbeamNaive, Strategy::AsyncSubmit];
    let quiet = vec![Row {
        name: Strategy::Pinned.name(),
        ns_per_call: 500.0,
        ratio_to_direct: 10.0,
        contexts_created: 1,
        os_threads: 1,
        wrong_results: Some(0),
    }];
    let t = std::time::Instant::now();
    let b = busy::run(Mode::Quick, &list, &quiet, |_| ());
    // Quick mode: 3 trials of ~20 ms each per row plus set-up, far inside
    // the section's own 30 s budget.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        b.hogs,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    assert_eq!(b.rows.len(), 3);
    for r in &b.rows {
        let ns = r.ns_per_call.unwrap_or_else(|| panic!("{} not measured", r.name));
        assert!(ns.is_finite() && ns > 0.0, "{r:?}");
        assert_eq!(r.wrong_results.unwrap_or(0), 0, "{r:?}");
    }
    assert_eq!(b.rows[0].quiet_ns, Some(500.0));
    assert_eq!(
        b.rows[0].peer.as_deref(),
        Some(Strategy::CrossbeamNaive.name().as_str())
    );
    assert_eq!(
        b.rows[2].peer.as_deref(),
        Some(Strategy::AsyncOneshot.name().as_str())
    );
    let mut text = String::new();
    b.write(&mut text);
    assert!(text.contains("Busy machine") && text.contains("x of"), "{text}");
    assert!(b.json().contains("\"quiet_ns_per_call\": 500.00"), "{}", b.json());
    // The hogs are gone once the section returns: no `sh` child is left.
    let children = std::fs::read_to_string(format!("/proc/self/task/{}/children", std::process::id()))
        .unwrap_or_default();
    assert!(children.trim().is_empty(), "hog processes left: {children}");
}
