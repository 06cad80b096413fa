//! Loom models of the production paths (see `owner.rs`).

use super::*;
use crate::config::Builder;
use crate::mailbox::Mailboxes;
use crate::worker::PinnedWorker;
use std::marker::PhantomData;
use std::sync::atomic::AtomicUsize;

/// A worker whose owner side is returned instead of started. No spins:
/// every wait takes its parking path, the one with the handshakes.
fn unstarted() -> (PinnedWorker<u64>, Core<u64>) {
    let config = Builder::default()
        .spin(Duration::ZERO)
        .owner_spin(Duration::ZERO)
        .timings(false)
        .capacity(4);
    let shared = Arc::new(Shared::new(config));
    let (tx, rx) = crossbeam_channel::unbounded();
    let (release_tx, release_rx) = crossbeam_channel::unbounded();
    let mailboxes = Mailboxes::new();
    let scanner = Scanner::new(Arc::clone(&mailboxes));
    let core = Core::new(Arc::clone(&shared), rx, release_rx, scanner, Box::new(|| Ok(0)));
    let worker = PinnedWorker {
        shared,
        tx,
        rx: core.rx.clone(),
        releases: release_tx,
        mailboxes,
        _state: PhantomData,
    };
    (worker, core)
}

/// Starts the owner loop on a loom thread.
fn start(core: Core<u64>) -> loom::thread::JoinHandle<()> {
    loom::thread::spawn(move || {
        core.shared.bell.set_owner(crate::sync::current());
        owner_thread(core, Some(OwnerState::new(0)), None);
    })
}

/// Counts its drops.
struct Token(Arc<AtomicUsize>);
impl Drop for Token {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `f` under loom, dropping the model threads' mailbox
/// registrations inside the model, even when `f` fails.
fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f)
}

/// `model` with its own preemption bound (a model with more threads needs
/// a lower one to finish).
fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    struct Forget;
    impl Drop for Forget {
        fn drop(&mut self) {
            crate::mailbox::forget_registrations();
        }
    }
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(preemptions);
    b.check(move || {
        let _forget = Forget;
        f()
    });
}

#[test]
fn loom_a_blocking_call_racing_close_gets_exactly_one_outcome() {
    model(|| {
        let (w, core) = unstarted();
        let w = Arc::new(w);
        let owner = start(core);
        let drops = Arc::new(AtomicUsize::new(0));
        let caller = {
            let (w, token) = (Arc::clone(&w), Token(Arc::clone(&drops)));
            loom::thread::spawn(move || {
                w.run(move |n| {
                    let _token = token;
                    *n += 1;
                    *n
                })
            })
        };
        w.close().unwrap();
        let got = caller.join().unwrap();
        owner.join().unwrap();
        assert!(matches!(got, Ok(1) | Err(Error::Closed)), "{got:?}");
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "the closure is dropped exactly once"
        );
        assert!(w.shared.has_exited());
    });
}

#[test]
fn loom_a_ticket_racing_close_is_run_or_refused_never_lost() {
    model(|| {
        let (w, core) = unstarted();
        let w = Arc::new(w);
        let owner = start(core);
        let caller = {
            let w = Arc::clone(&w);
            loom::thread::spawn(move || w.submit(|n| *n + 7).map(|t| t.wait()))
        };
        w.close().unwrap();
        let got = caller.join().unwrap();
        owner.join().unwrap();
        assert!(matches!(got, Ok(Ok(7)) | Err(Error::Closed)), "{got:?}");
    });
}

/// A release racing on another thread must not hide one made before a
/// submit, nor leave the owner spinning on a release it cannot count yet
/// (with the count made after the send, the owner's look saw the message
/// while its poll, gated on the count, skipped it: this model then never
/// ends). The two values are bound before the owner starts (as `bind`
/// leaves them), and the preemption bound is 2, to keep the model small.
#[test]
fn loom_a_racing_release_does_not_hide_one_made_before_a_submit() {
    model_bounded(2, || {
        let (w, core) = unstarted();
        let (early, racing) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut state = OwnerState::new(0);
        let mut handle = |id: u64, drops: &Arc<AtomicUsize>| {
            state.bound.insert(id, Box::new(Token(Arc::clone(drops))));
            crate::bound::Bound::<Token> {
                id,
                worker: w.shared.id,
                releases: w.releases.clone(),
                shared: Arc::clone(&w.shared),
                _value: PhantomData,
            }
        };
        let (before, other) = (handle(1, &early), handle(2, &racing));
        let owner = loom::thread::spawn(move || {
            core.shared.bell.set_owner(crate::sync::current());
            owner_thread(core, Some(state), None);
        });
        let dropper = loom::thread::spawn(move || drop(other));
        drop(before);
        let seen = Arc::clone(&early);
        let freed = w.submit(move |_| seen.load(Ordering::SeqCst)).unwrap().wait();
        assert_eq!(freed, Ok(1), "the job ran before the released value was freed");
        dropper.join().unwrap();
        w.close().unwrap();
        owner.join().unwrap();
        assert_eq!(racing.load(Ordering::SeqCst), 1, "the racing value was freed too");
    });
}

#[test]
fn loom_a_value_released_before_a_submit_is_freed_before_that_job_runs() {
    model(|| {
        let (w, core) = unstarted();
        let owner = start(core);
        let drops = Arc::new(AtomicUsize::new(0));
        let token = Token(Arc::clone(&drops));
        let handle = w.bind(move |_| token).unwrap();
        drop(handle);
        let seen = Arc::clone(&drops);
        let freed = w.submit(move |_| seen.load(Ordering::SeqCst)).unwrap().wait();
        assert_eq!(freed, Ok(1), "the job ran before the released value was freed");
        w.close().unwrap();
        owner.join().unwrap();
    });
}
