//! glibc's per-thread locale: the raw failure (threads and hopping async
//! tasks format with the wrong locale), then the same work through pinned
//! owners with zero wrong results, and what each panic policy does to the
//! owner's locale.
//!
//! Needs the de_DE.UTF-8 locale (`localedef -i de_DE -f UTF-8 de_DE.UTF-8`);
//! without it every test prints a SKIPPED line.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};
use std::time::Duration;

use pinned_ffi::{PanicPolicy, PinnedWorker, Pool};
use pinned_ffi_sdks::locale::raw::{self, Locale};
use pinned_ffi_sdks::locale::{Formatter, LocaleError, C, GERMAN};
use pinned_ffi_sdks::skipped;

/// The German and C locale objects, or `None` (and a SKIPPED line) when
/// this machine has no German locale.
fn locales(test: &str) -> Option<(&'static Locale, &'static Locale)> {
    static LOCALES: OnceLock<Result<(&'static Locale, &'static Locale), String>> = OnceLock::new();
    let got = LOCALES.get_or_init(|| match Locale::leak(GERMAN) {
        Ok(de) => Ok((de, Locale::leak(C).expect("the C locale always exists"))),
        Err(e @ LocaleError::Missing { .. }) => Err(e.to_string()),
        Err(e) => panic!("newlocale({GERMAN}) failed unexpectedly: {e}"),
    });
    match got {
        Ok(pair) => Some(*pair),
        Err(why) => {
            skipped(test, why);
            None
        }
    }
}

/// What `%.2f` of `x` is in `locale`.
fn expected(x: f64, locale: &str) -> String {
    let s = format!("{x:.2}");
    if locale == GERMAN {
        s.replace('.', ",")
    } else {
        s
    }
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_time()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------
// The raw failure, observed.
// ---------------------------------------------------------------------------

#[test]
fn raw_threads_each_format_with_their_own_locale() {
    let Some((de, _)) = locales("raw_threads_each_format_with_their_own_locale") else {
        return;
    };
    // Throwaway threads: the locale dies with the thread that set it.
    let german = thread::spawn(move || {
        raw::use_here(de);
        (thread::current().id(), raw::format(1.5), raw::parse("1,5").ok())
    })
    .join()
    .unwrap();
    let plain = thread::spawn(|| {
        (
            thread::current().id(),
            raw::format(1.5),
            raw::parse("1,5").is_err(),
        )
    })
    .join()
    .unwrap();
    assert_ne!(german.0, plain.0, "two different threads");
    assert_eq!(german.1, "1,50", "the thread that set de_DE formats with a comma");
    assert_eq!(german.2, Some(1.5));
    assert_eq!(plain.1, "1.50", "another thread still formats with a point");
    assert!(plain.2, "and reads \"1,5\" as 1 followed by \",5\"");
}

#[test]
fn raw_async_tasks_format_with_the_wrong_locale_after_hopping() {
    let Some((de, c)) = locales("raw_async_tasks_format_with_the_wrong_locale_after_hopping") else {
        return;
    };
    let rt = runtime(4);
    const TASKS: usize = 200;
    const ROUNDS: usize = 5;
    // Each task sets its locale on the thread it runs on, awaits, then
    // formats: half want German, half C, as two kinds of request would.
    let (runs, hops, wrong) = rt.block_on(async move {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                tokio::spawn(async move {
                    let (mine, name) = if i % 2 == 0 { (de, GERMAN) } else { (c, C) };
                    let (mut hops, mut wrong) = (0usize, 0usize);
                    for _ in 0..ROUNDS {
                        raw::use_here(mine);
                        let before = thread::current().id();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        tokio::task::yield_now().await;
                        let got = raw::format(1.5);
                        hops += usize::from(thread::current().id() != before);
                        wrong += usize::from(got != expected(1.5, name));
                    }
                    (hops, wrong)
                })
            })
            .collect();
        let (mut hops, mut wrong) = (0, 0);
        for t in tasks {
            let (h, w) = t.await.unwrap();
            hops += h;
            wrong += w;
        }
        (TASKS * ROUNDS, hops, wrong)
    });
    println!("raw async locale: {wrong} wrong of {runs} formats, {hops} thread hops");
    assert!(
        hops > 0,
        "no task changed threads across an await in {runs} tries: the raw failure could not be shown"
    );
    assert!(
        wrong > 0,
        "{hops} hops but no wrong format: the locale did not follow the thread?"
    );

    // The threads those tasks ran on keep the last locale set there.
    let (tries, left_german, unrelated_wrong) = rt.block_on(async move {
        // Tasks that set German and forget to restore it: every thread that
        // ran one is left in German.
        let mut german_threads = HashSet::<ThreadId>::new();
        let setters: Vec<_> = (0..TASKS)
            .map(|_| {
                tokio::spawn(async move {
                    raw::use_here(de);
                    thread::current().id()
                })
            })
            .collect();
        for t in setters {
            german_threads.insert(t.await.unwrap());
        }
        // Unrelated tasks, which never touch the locale and expect the
        // process's "C": fifty of them, and more until one lands on such a
        // thread.
        let (mut tries, mut on_german, mut wrong) = (0, 0, 0);
        while tries < 50 || (on_german == 0 && tries < 10_000) {
            tries += 1;
            let (id, got) = tokio::spawn(async { (thread::current().id(), raw::format(1.5)) })
                .await
                .unwrap();
            if got != "1.50" {
                wrong += 1;
            }
            if german_threads.contains(&id) {
                on_german += 1;
                assert_eq!(got, "1,50", "a thread a German task left formats in German");
            }
        }
        (tries, on_german, wrong)
    });
    println!("raw async locale: {unrelated_wrong} of {tries} unrelated tasks formatted in German");
    assert!(
        left_german > 0,
        "no unrelated task ran on a thread left in German in {tries} tries"
    );
    assert!(unrelated_wrong > 0);
}

// ---------------------------------------------------------------------------
// Pinned: exact.
// ---------------------------------------------------------------------------

/// Std threads (`run`) and tokio tasks (`call().await`) that also scramble
/// their own threads' locales, against owners in `names[i]`; returns the
/// number of calls and of wrong results.
fn hammer(
    pool: Arc<Pool<Formatter>>,
    names: &'static [&'static str],
    de: &'static Locale,
    c: &'static Locale,
) -> (usize, usize) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 300;
    const TASKS: usize = 100;
    const PER_TASK: usize = 12;
    let check = |i: usize, x: f64, got: &(String, Result<f64, LocaleError>)| {
        let want = expected(x, names[i]);
        usize::from(got.0 != want || got.1.as_ref().ok() != Some(&x))
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                let mut wrong = 0;
                for k in 0..PER_THREAD {
                    // The caller's own locale must not matter.
                    raw::use_here(if k % 3 == 0 { de } else { c });
                    let i = (t + k) % pool.len();
                    let x = k as f64 + 0.25;
                    let text = expected(x, names[i]);
                    let got = pool.to(i).run(|f| (f.format(x), f.parse(&text))).unwrap();
                    wrong += check(i, x, &got);
                }
                wrong
            })
        })
        .collect();
    let rt = runtime(4);
    let task_wrong = rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let mut wrong = 0;
                    for k in 0..PER_TASK {
                        raw::use_here(if (t + k) % 2 == 0 { de } else { c });
                        let i = (t + k) % pool.len();
                        let x = (t * PER_TASK + k) as f64 + 0.75;
                        let text = expected(x, names[i]);
                        let got = pool
                            .to(i)
                            .call(move |f| (f.format(x), f.parse(&text)))
                            .await
                            .unwrap();
                        wrong += check(i, x, &got);
                        tokio::task::yield_now().await;
                    }
                    wrong
                })
            })
            .collect();
        let mut wrong = 0;
        for t in tasks {
            wrong += t.await.unwrap();
        }
        wrong
    });
    let thread_wrong: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    (THREADS * PER_THREAD + TASKS * PER_TASK, thread_wrong + task_wrong)
}

#[test]
fn pinned_worker_formats_exactly() {
    let Some((de, c)) = locales("pinned_worker_formats_exactly") else {
        return;
    };
    let pool = Arc::new(Pool::builder(1).spawn(|_| Formatter::new(GERMAN)).unwrap());
    let (calls, wrong) = hammer(pool, &[GERMAN], de, c);
    println!("pinned worker (de_DE): {wrong} wrong of {calls}");
    assert_eq!(wrong, 0);

    // The worker itself, without a pool.
    let w = PinnedWorker::spawn(|| Formatter::new(GERMAN)).unwrap();
    assert_eq!(w.run(|f| f.format(1234.5)).unwrap(), "1234,50");
    assert!(matches!(
        w.run(|f| f.parse("1.5")).unwrap(),
        Err(LocaleError::Trailing { .. })
    ));
    let rt = runtime(2);
    assert_eq!(rt.block_on(w.call(|f| f.format(-0.125))).unwrap(), "-0,12");
}

#[test]
fn pinned_pool_of_two_locales_formats_exactly() {
    let Some((de, c)) = locales("pinned_pool_of_two_locales_formats_exactly") else {
        return;
    };
    static NAMES: [&str; 2] = [GERMAN, C];
    let pool = Arc::new(Pool::builder(2).spawn(|i| Formatter::new(NAMES[i])).unwrap());
    let (calls, wrong) = hammer(Arc::clone(&pool), &NAMES, de, c);
    println!("pinned pool (de_DE, C): {wrong} wrong of {calls}");
    assert_eq!(wrong, 0);
    let names: Vec<_> = pool
        .broadcast(|f| f.name().to_owned())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, NAMES);
    assert_ne!(pool.worker(0).owner_tid(), pool.worker(1).owner_tid());
}

// ---------------------------------------------------------------------------
// Panics, and Drop.
// ---------------------------------------------------------------------------

#[test]
fn keep_policy_keeps_the_locale_on_the_owner_after_a_panic() {
    let Some((_, c)) = locales("keep_policy_keeps_the_locale_on_the_owner_after_a_panic") else {
        return;
    };
    let w = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Keep)
        .spawn(|| Formatter::new(GERMAN))
        .unwrap();
    let tid = w.run(|_| pinned_ffi::threads::current_tid()).unwrap();
    assert!(w.run(|_: &mut Formatter| panic!("boom")).is_err());
    // Same thread, same state, locale still current.
    let after = w
        .run(|f| (pinned_ffi::threads::current_tid(), f.is_current(), f.format(1.5)))
        .unwrap();
    assert_eq!(after, (tid, true, "1,50".to_owned()));

    // The trap: a job that changes the thread's locale and panics leaves
    // the change on the kept thread. Raw calls there see it; the
    // formatter's own operations put its locale back.
    assert!(w
        .run(move |_: &mut Formatter| {
            raw::use_here(c);
            panic!("changed the locale, then panicked");
        })
        .is_err());
    let (current, raw_there, ours, repairs) = w
        .run(|f| (f.is_current(), raw::format(1.5), f.format(1.5), f.repairs()))
        .unwrap();
    assert!(!current, "the panicking job's uselocale survived on the owner");
    assert_eq!(raw_there, "1.50");
    assert_eq!((ours.as_str(), repairs), ("1,50", 1));
    assert!(w.run(|f| f.is_current()).unwrap());
}

#[test]
fn reinit_policy_sets_the_locale_again_on_the_fresh_thread() {
    let Some((_, c)) = locales("reinit_policy_sets_the_locale_again_on_the_fresh_thread") else {
        return;
    };
    let w = PinnedWorker::builder()
        .panic_policy(PanicPolicy::Reinit)
        .spawn(|| Formatter::new(GERMAN))
        .unwrap();
    let tid = w.run(|_| pinned_ffi::threads::current_tid()).unwrap();
    assert!(w
        .run(move |_: &mut Formatter| {
            raw::use_here(c);
            panic!("changed the locale, then panicked");
        })
        .is_err());
    let (new_tid, current, raw_there, ours, repairs) = w
        .run(|f| {
            (
                pinned_ffi::threads::current_tid(),
                f.is_current(),
                raw::format(1.5),
                f.format(1.5),
                f.repairs(),
            )
        })
        .unwrap();
    assert_ne!(new_tid, tid, "a fresh owner thread");
    assert!(current, "init made the locale current on it");
    assert_eq!((raw_there.as_str(), ours.as_str(), repairs), ("1,50", "1,50", 0));
}

#[test]
fn drop_puts_the_thread_back_on_the_global_locale() {
    if locales("drop_puts_the_thread_back_on_the_global_locale").is_none() {
        return;
    }
    let (inside, after) = thread::spawn(|| {
        let mut f = Formatter::new(GERMAN).unwrap();
        let inside = (f.format(1.5), raw::format(1.5));
        drop(f);
        (inside, raw::format(1.5))
    })
    .join()
    .unwrap();
    assert_eq!(inside, ("1,50".to_owned(), "1,50".to_owned()));
    assert_eq!(after, "1.50");
}

#[test]
fn a_missing_locale_is_a_typed_error() {
    let err = PinnedWorker::spawn(|| Formatter::new("xx_NOWHERE.UTF-8")).unwrap_err();
    assert!(
        matches!(err, pinned_ffi::SpawnError::Init(LocaleError::Missing { ref name }) if name == "xx_NOWHERE.UTF-8"),
        "{err}"
    );
    assert!(matches!(Formatter::new("a\0b"), Err(LocaleError::BadName(_))));
    let mut f = Formatter::new(C).unwrap();
    assert!(matches!(f.parse("x"), Err(LocaleError::NotANumber { .. })));
    assert!(matches!(f.parse("1e999"), Err(LocaleError::OutOfRange { .. })));
    assert!(matches!(f.parse("1,5"), Err(LocaleError::Trailing { ref rest, .. }) if rest == ",5"));
    assert_eq!(f.parse("-2.5").unwrap(), -2.5);
}
