//! glibc's per-thread `errno`: read after an `.await` it is another
//! task's (or the runtime's); read in the same job as the call, on an
//! owner thread, it is always the caller's own.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pinned_ffi_sdks::errno::{self, Errno, Failure, Sys};

#[test]
fn the_typed_operations_read_their_own_errno() {
    let mut sys = Sys::new();
    for f in Failure::ALL {
        assert_eq!(sys.attempt(f), Err(f.expected()), "{f:?}");
    }
    let distinct: std::collections::HashSet<_> = Failure::ALL.iter().map(|f| f.expected()).collect();
    assert_eq!(
        distinct.len(),
        Failure::ALL.len(),
        "each failure has its own errno"
    );
    assert_eq!(sys.strtol(c"-42", 10), Ok(-42));
    assert_eq!(sys.strtol(c"42abc", 10), Err(Errno(libc::EINVAL)));
    let null = sys.open(c"/dev/null", libc::O_RDONLY).unwrap();
    assert_eq!(sys.lseek(&null, 0, libc::SEEK_SET), Ok(0));
    let e = Errno(libc::ENOENT);
    assert_eq!(
        e.to_string(),
        format!("ENOENT: {}", std::io::Error::from_raw_os_error(libc::ENOENT))
    );
}

/// One raw task: fail a call, await, then read errno, as code that keeps
/// "the last error" across an `.await` does. Returns (hopped, wrong).
async fn raw_task(i: usize) -> (bool, bool) {
    let failure = Failure::ALL[i % Failure::ALL.len()];
    let before = thread::current().id();
    failure.provoke();
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1 + (i % 3) as u64)).await;
    let read = Errno(errno::errno());
    (thread::current().id() != before, read != failure.expected())
}

#[test]
fn raw_async_tasks_read_an_errno_that_is_not_theirs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    const TASKS: usize = 300;
    let (mut hops, mut wrong, mut wrong_hopped, mut rounds) = (0, 0, 0, 0);
    // Hops are the scheduler's choice: run rounds until some happened
    // (nearly always the first), and fail clearly if none ever does.
    while rounds < 10 && (hops == 0 || wrong == 0) {
        rounds += 1;
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS).map(|i| tokio::spawn(raw_task(i))).collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        for (hopped, bad) in results {
            hops += usize::from(hopped);
            wrong += usize::from(bad);
            wrong_hopped += usize::from(hopped && bad);
        }
    }
    println!(
        "raw async errno: {} tasks in {rounds} round(s): {hops} hopped threads, {wrong} read an errno \
         not theirs ({wrong_hopped} of them after a hop)",
        TASKS * rounds
    );
    assert!(
        hops > 0,
        "no task changed threads in {rounds} rounds: the hazard was not exercised"
    );
    assert!(wrong > 0, "{hops} tasks hopped yet every one read its own errno");
}

#[test]
fn through_a_worker_and_a_pool_every_caller_gets_its_own_errno() {
    let worker = Arc::new(errno::worker().unwrap());
    let pool = Arc::new(errno::pool(2).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    const TASKS: usize = 300;
    const THREADS: usize = 4;
    const PER_THREAD: usize = 75;
    let (wrong, callers) = thread::scope(|s| {
        // Std threads, blocking: half to the worker, half to the pool.
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (worker, pool) = (&worker, &pool);
                s.spawn(move || {
                    (0..PER_THREAD)
                        .filter(|j| {
                            let f = Failure::ALL[(t * PER_THREAD + j) % Failure::ALL.len()];
                            let got = if t % 2 == 0 {
                                worker.run(|sys| sys.attempt(f)).unwrap()
                            } else {
                                pool.run(|sys| sys.attempt(f)).unwrap()
                            };
                            got != Err(f.expected())
                        })
                        .count()
                })
            })
            .collect();
        // Tokio tasks, awaiting: the failing call and the errno read are
        // one job, so the awaits around it cannot come between them.
        let async_wrong = rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|i| {
                    let (worker, pool) = (Arc::clone(&worker), Arc::clone(&pool));
                    tokio::spawn(async move {
                        let f = Failure::ALL[i % Failure::ALL.len()];
                        tokio::task::yield_now().await;
                        let got = if i % 2 == 0 {
                            worker.call(move |sys| sys.attempt(f)).await.unwrap()
                        } else {
                            pool.call(move |sys| sys.attempt(f)).await.unwrap()
                        };
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        got != Err(f.expected())
                    })
                })
                .collect();
            let mut wrong = 0;
            for t in tasks {
                wrong += usize::from(t.await.unwrap());
            }
            wrong
        });
        let thread_wrong: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        (async_wrong + thread_wrong, TASKS + THREADS * PER_THREAD)
    });
    println!("pinned errno: {callers} callers, {wrong} wrong");
    assert_eq!(wrong, 0);
}

#[test]
fn strtol_zeroes_errno_first_so_a_stale_one_is_not_reported() {
    let worker = errno::worker().unwrap();
    // A job leaves errno set; on the owner it stays until overwritten.
    worker.run(|_| Failure::BadFd.provoke()).unwrap();
    let (stale, parsed) = worker.run(|sys| (errno::errno(), sys.strtol(c"7", 10))).unwrap();
    assert_ne!(stale, 0, "the previous job's errno is still there");
    assert_eq!(
        parsed,
        Ok(7),
        "a successful strtol is not failed by a stale errno"
    );
}
