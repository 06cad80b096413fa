//! Unit tests of the lane protocol (see `lane.rs`): small and large jobs,
//! panics, rejections, posts nobody takes, and what fits inline.

use super::*;
use crate::mailbox::Mailboxes;
use std::sync::Arc;

type Mb = Mailbox<Lane<u64>>;

#[test]
fn the_hot_part_of_a_lane_shares_the_mailbox_sequence_numbers_cache_line() {
    let registry = Mailboxes::<Lane<u64>>::new();
    // SAFETY: key 1 is this registry's only key.
    let mb = unsafe { registry.mine(1, || Lane::new(std::thread::current())) }.unwrap();
    // SAFETY: this thread's own mailbox, alive while `registry` is.
    let mb = unsafe { mb.as_ref() };
    let start = mb as *const Mb as usize;
    let payload_end = mb.lane().payload.with_mut(|p| p as usize) + PAYLOAD;
    assert_eq!(start % 128, 0, "mailboxes start on a cache-line pair");
    assert!(
        payload_end - start <= 64,
        "payload ends {} bytes in",
        payload_end - start
    );
}

#[test]
fn what_fits_inline() {
    assert!(fits::<&u64, Result<u64, crate::Error>>());
    assert!(fits::<[u64; 5], ()>());
    assert!(!fits::<[u64; 6], ()>());
    assert!(!fits::<(), [u8; 41]>());
}

#[test]
fn what_fits_follows_the_storages_own_alignment() {
    #[repr(align(16))]
    struct Wide(#[allow(dead_code)] u8);
    assert!(!fits::<Wide, ()>(), "16-aligned closures go by reference");
    assert!(!fits::<(), Wide>(), "16-aligned results go by reference");
    // Storage that is only 4-aligned (as `[u64; N]` is on i686) must
    // refuse an 8-aligned value, whatever its size: the check reads
    // the storage's alignment instead of assuming 8.
    assert!(!fits_in::<u64, [u32; 10]>());
    assert!(fits_in::<u32, [u32; 10]>());
    assert_eq!(align_of::<Payload>(), 8);
}

/// An owner thread running `serve_posts` from the mailbox's last post
/// (read here, before the caller posts again: a server started from 0
/// would take an answered post a second time, run its handler on a spent
/// payload, and leave the next post unserved).
fn serve(mb: Arc<Mb>, posts: u64, reject: bool) -> std::thread::JoinHandle<u64> {
    let seen = mb.published_for_test();
    std::thread::spawn(move || serve_posts(&mb, seen, posts, reject, std::hint::spin_loop))
}

fn lane_for_this_thread() -> Arc<Mb> {
    Arc::new(Mb::for_test(Lane::new(std::thread::current())))
}

#[test]
fn small_and_large_jobs_panics_and_rejections_all_come_back() {
    let mb = lane_for_this_thread();
    let owner = serve(Arc::clone(&mb), 4, false);
    let big = [3u64; 8]; // too big for the payload: goes by reference
                         // SAFETY: this thread is the lane's poster, and each call waits for
                         // its answer before the next.
    let small = unsafe {
        Lane::call(
            &mb,
            |s: &mut u64| {
                *s += 1;
                *s
            },
            None,
            Duration::ZERO,
            &Open,
        )
    };
    assert_eq!(small, Ok(1));
    // SAFETY: as above.
    let large = unsafe {
        Lane::call(
            &mb,
            move |s: &mut u64| {
                *s += big[0];
                [*s; 7]
            },
            None,
            Duration::ZERO,
            &Open,
        )
    };
    assert_eq!(large, Ok([4; 7]));
    let boom = |_: &mut u64| -> u8 { panic!("boom") };
    // SAFETY: as above.
    let panicked = unsafe { Lane::call(&mb, boom, None, Duration::from_micros(50), &Open) };
    assert_eq!(panicked, Err(Error::Panicked("boom".into())));
    // SAFETY: as above.
    let timed = unsafe {
        Lane::call(
            &mb,
            |s: &mut u64| *s,
            Some(Instant::now()),
            Duration::from_micros(50),
            &Open,
        )
    };
    assert_eq!(timed, Ok(4));
    assert_eq!(owner.join().unwrap(), 4);

    let token = Arc::new(());
    let owner = serve(Arc::clone(&mb), 2, true);
    let held = Arc::clone(&token);
    // SAFETY: as above.
    let small = unsafe { Lane::call(&mb, move |_: &mut u64| drop(held), None, Duration::ZERO, &Open) };
    assert_eq!(small, Err(Error::Shutdown));
    let (held, big) = (Arc::clone(&token), [0u64; 8]);
    // SAFETY: as above.
    let large = unsafe {
        Lane::call(
            &mb,
            move |_: &mut u64| {
                drop(held);
                big
            },
            None,
            Duration::ZERO,
            &Open,
        )
    };
    assert_eq!(large, Err(Error::Shutdown));
    owner.join().unwrap();
    assert_eq!(Arc::strong_count(&token), 1, "rejected closures are dropped");
}

/// An owner that closed and exited before the post: nobody takes it.
struct Gone;
impl Owner for Gone {
    fn posted(&self) {}
    fn taking(&self) -> bool {
        false
    }
    fn exited(&self) -> bool {
        true
    }
    fn refusal(&self) -> Error {
        Error::Closed
    }
}

#[test]
fn a_post_nobody_takes_is_refused_and_its_closure_dropped_by_the_poster() {
    let mb = lane_for_this_thread();
    let token = Arc::new(());
    let held = Arc::clone(&token);
    // SAFETY: this thread is the lane's poster, nothing outstanding.
    let small = unsafe { Lane::call(&mb, move |_: &mut u64| drop(held), None, Duration::ZERO, &Gone) };
    assert_eq!(small, Err(Error::Closed));
    let held = Arc::clone(&token);
    let big = [0u64; 8];
    // SAFETY: as above.
    let large = unsafe {
        Lane::call(
            &mb,
            move |_: &mut u64| {
                drop(held);
                big
            },
            None,
            Duration::ZERO,
            &Gone,
        )
    };
    assert_eq!(large, Err(Error::Closed));
    assert_eq!(Arc::strong_count(&token), 1, "both closures were dropped");
}

#[test]
#[cfg_attr(miri, ignore)] // Miri has no CPUs to note
fn a_poster_that_parks_and_its_owner_note_where_each_other_ran() {
    let mb = lane_for_this_thread();
    let seen = mb.published_for_test();
    let owner_mb = Arc::clone(&mb);
    let owner = std::thread::spawn(move || {
        let mut seen = seen;
        let post = loop {
            if let Some(p) = owner_mb.take_for_test(&mut seen) {
                break p;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        // The poster does not spin: by now it has said it is waiting.
        std::thread::sleep(Duration::from_millis(50));
        let mut state = 0u64;
        handle(&post, Action::Run(&mut state), |_| ());
        crate::spin::parked_poster()
    });
    // SAFETY: this thread is the lane's poster; the call waits for its answer.
    let r = unsafe { Lane::call(&mb, |s: &mut u64| *s + 9, None, Duration::ZERO, &Open) };
    assert_eq!(r, Ok(9));
    let noted = owner.join().unwrap();
    let poster_cpu = mb.lane().poster_cpu.get();
    let unknown = crate::spin::Partner::UNKNOWN;
    assert_ne!(poster_cpu, unknown, "the poster noted its CPU before it parked");
    assert_eq!(noted, poster_cpu, "the owner carries it to its next idle wait");
    let owner_cpu = mb.lane().owner_cpu.get();
    assert_ne!(
        owner_cpu, unknown,
        "the owner noted its CPU for the poster's next wait"
    );
}
