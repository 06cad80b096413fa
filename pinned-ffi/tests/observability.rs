//! The `tracing` and `metrics` integrations: job spans carry pool, worker
//! index and the caller's label; snapshots export through the facade.
//! `cargo test -p pinned-ffi --features tracing,metrics --test observability`.
#![cfg(all(feature = "tracing", feature = "metrics"))]

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pinned_ffi::{with_label, Pool};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the fields of every span and event it is told about.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    seen: Mutex<Vec<HashMap<String, String>>>,
    events: Mutex<Vec<HashMap<String, String>>>,
}

/// The process-wide subscriber (the watchdog logs from its own thread, so
/// a thread-local default would not see it).
fn subscriber() -> &'static Spans {
    static SPANS: std::sync::OnceLock<&'static Spans> = std::sync::OnceLock::new();
    SPANS.get_or_init(|| {
        let spans: &'static Spans = Box::leak(Box::default());
        tracing::subscriber::set_global_default(spans).unwrap();
        spans
    })
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for &'static Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = HashMap::new();
        fields.insert("name".to_owned(), attrs.metadata().name().to_owned());
        attrs.record(&mut Fields(&mut fields));
        self.seen.lock().unwrap().push(fields);
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = HashMap::new();
        fields.insert("level".to_owned(), event.metadata().level().to_string());
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn jobs_run_in_spans_with_pool_index_and_label() {
    let spans = subscriber();
    let pool = Pool::builder(2)
        .name("gpu")
        .spawn(|_| Ok::<_, std::io::Error>(()))
        .unwrap();
    with_label("tenant-7", || pool.worker(1).run(|_| ())).unwrap();
    pool.worker(0).run(|_| ()).unwrap();
    let seen = spans.seen.lock().unwrap().clone();
    let jobs: Vec<_> = seen
        .iter()
        .filter(|f| f["name"] == "pinned_ffi::job" && f["pool"] == "gpu")
        .collect();
    assert_eq!(jobs.len(), 2, "{seen:?}");
    assert_eq!(
        (jobs[0]["worker"].as_str(), jobs[0]["pool"].as_str()),
        ("gpu-1", "gpu")
    );
    assert_eq!(
        (jobs[0]["index"].as_str(), jobs[0]["label"].as_str()),
        ("1", "tenant-7")
    );
    assert_eq!(
        (jobs[1]["index"].as_str(), jobs[1]["label"].as_str()),
        ("0", ""),
        "the label ended with its scope"
    );
}

#[test]
fn a_hung_owner_is_logged_as_a_warning_once() {
    let spans = subscriber();
    let w = pinned_ffi::PinnedWorker::builder()
        .name("stuck-hsm")
        .hang_limit(std::time::Duration::from_millis(10))
        .spawn(|| Ok::<_, std::io::Error>(()))
        .unwrap();
    w.run(|_| std::thread::sleep(std::time::Duration::from_millis(300)))
        .unwrap();
    let t0 = std::time::Instant::now();
    while w.metrics().hangs == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "never reported"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let warned: Vec<_> = spans
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.get("worker").map(String::as_str) == Some("stuck-hsm"))
        .cloned()
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert!(warned[0]["message"].contains("hang limit"), "{warned:?}");
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || w.metrics().export());
    let got = recorder.0.lock().unwrap().clone();
    assert_eq!(got["pinned_ffi_hangs_total{worker=stuck-hsm}"], 1.0);
    assert_eq!(got["pinned_ffi_healthy{worker=stuck-hsm}"], 1.0);
}

/// Keeps the last value of every series it is given.
#[derive(Default, Clone)]
struct Last(Arc<Mutex<HashMap<String, f64>>>);

struct Series(String, Arc<Mutex<HashMap<String, f64>>>);

impl metrics::CounterFn for Series {
    fn increment(&self, v: u64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() += v as f64;
    }
    fn absolute(&self, v: u64) {
        self.1.lock().unwrap().insert(self.0.clone(), v as f64);
    }
}

impl metrics::GaugeFn for Series {
    fn increment(&self, v: f64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() += v;
    }
    fn decrement(&self, v: f64) {
        *self.1.lock().unwrap().entry(self.0.clone()).or_default() -= v;
    }
    fn set(&self, v: f64) {
        self.1.lock().unwrap().insert(self.0.clone(), v);
    }
}

impl Last {
    fn series(&self, key: &metrics::Key) -> Arc<Series> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        Arc::new(Series(
            format!("{}{{{}}}", key.name(), labels.join(",")),
            Arc::clone(&self.0),
        ))
    }
}

impl metrics::Recorder for Last {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.series(key))
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn snapshots_export_through_the_metrics_facade() {
    let pool = Pool::builder(1)
        .name("hsm")
        .spawn(|_| Ok::<_, std::io::Error>(()))
        .unwrap();
    // Enough jobs for timed samples (the first job of each calling thread and one in TIMED_ONE_JOB_IN after it).
    let jobs = 2 * u64::from(pinned_ffi::TIMED_ONE_JOB_IN);
    for _ in 0..jobs {
        pool.run(|_| std::thread::sleep(std::time::Duration::from_micros(100)))
            .unwrap();
    }
    let _ = pool.run(|_| -> () { panic!("one failure") });
    let recorder = Last::default();
    metrics::with_local_recorder(&recorder, || pool.worker(0).metrics().export());
    let got = recorder.0.lock().unwrap().clone();
    assert_eq!(got["pinned_ffi_jobs_completed_total{worker=hsm-0}"], jobs as f64);
    assert_eq!(got["pinned_ffi_jobs_panicked_total{worker=hsm-0}"], 1.0);
    assert_eq!(
        got["pinned_ffi_jobs_submitted_total{worker=hsm-0}"],
        jobs as f64 + 1.0
    );
    assert_eq!(got["pinned_ffi_queue_depth{worker=hsm-0}"], 0.0);
    assert!(
        got["pinned_ffi_run_seconds{quantile=0.5,worker=hsm-0}"] >= 100e-6,
        "{got:?}"
    );
}
