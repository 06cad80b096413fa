//! Model checks of the lane protocol (see `lane.rs`): the answer always
//! reaches a parked poster, by either road, and a rejected post drops its
//! closure.

use super::*;
use loom::sync::Arc;

type Mb = Mailbox<Lane<u64>>;

/// An owner thread running `serve_posts`.
fn owner(mb: Arc<Mb>, posts: u64, reject: bool) -> loom::thread::JoinHandle<u64> {
    loom::thread::spawn(move || serve_posts(&mb, 0, posts, reject, loom::thread::yield_now))
}

#[test]
fn loom_a_parked_poster_gets_an_inline_result() {
    loom::model(|| {
        let mb = Arc::new(Mb::for_test(Lane::new(loom::thread::current())));
        let t = owner(Arc::clone(&mb), 1, false);
        // No spinning: straight to the racy set-WAITING-and-park path.
        // SAFETY: this thread is the lane's poster, nothing outstanding.
        let out = unsafe {
            Lane::call(
                &mb,
                |s: &mut u64| {
                    *s += 5;
                    *s * 2
                },
                None,
                Duration::ZERO,
                &Open,
            )
        };
        assert_eq!(out, Ok(10));
        assert_eq!(t.join().unwrap(), 5);
    });
}

#[test]
fn loom_two_posts_in_a_row_by_reference() {
    loom::model(|| {
        let mb = Arc::new(Mb::for_test(Lane::new(loom::thread::current())));
        let t = owner(Arc::clone(&mb), 2, false);
        let big = [1u64; 8]; // too big for the payload: goes by reference
        for want in [8, 16] {
            // SAFETY: as above; the previous call waited for its answer.
            let out = unsafe {
                Lane::call(
                    &mb,
                    move |s: &mut u64| {
                        *s += big.iter().sum::<u64>();
                        [*s; 6]
                    },
                    None,
                    Duration::ZERO,
                    &Open,
                )
            };
            assert_eq!(out, Ok([want; 6]));
        }
        assert_eq!(t.join().unwrap(), 16);
    });
}

#[test]
fn loom_a_rejected_post_answers_with_the_error_and_drops_the_closure() {
    loom::model(|| {
        let mb = Arc::new(Mb::for_test(Lane::new(loom::thread::current())));
        let t = owner(Arc::clone(&mb), 1, true);
        let token = std::sync::Arc::new(());
        let held = std::sync::Arc::clone(&token);
        // SAFETY: as above.
        let out = unsafe { Lane::call(&mb, move |_: &mut u64| drop(held), None, Duration::ZERO, &Open) };
        assert_eq!(out, Err(Error::Shutdown));
        assert_eq!(std::sync::Arc::strong_count(&token), 1, "the closure was dropped");
        assert_eq!(t.join().unwrap(), 0);
    });
}
