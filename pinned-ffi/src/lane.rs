//! The lane: a blocking caller's job, carried to the owner inside the
//! caller's own mailbox line, and the answer, written back into that line.
//!
//! Between two cores, a hand-off costs cache-line transfers, and nothing
//! else comes close (tens of nanoseconds each on a VM). Posting a pointer
//! to a job that lives elsewhere costs at least three: the owner reads the
//! mailbox, then the job it points to, and the caller reads the result
//! where the owner wrote it. A lane carries a small job *in* the mailbox
//! line: the owner's one read brings the closure along; it writes the
//! result over the closure's bytes and the answer word beside them; the
//! caller's one read brings both back. That is the two transfers of a spin
//! ping-pong, the hardware's floor for a round trip.
//!
//! A job whose closure or result does not fit the payload goes by
//! reference: the lane carries pointers to the closure and to the result's
//! place in the caller's frame, and the protocol is the same.
//!
//! The answer word is `post << 3 | WAITING | status`. The owner swaps it in
//! with one read-modify-write; a caller that has spun out sets `WAITING`
//! with one read-modify-write and parks. The two RMWs on one word are
//! totally ordered, so either the caller sees the answer or the owner sees
//! `WAITING` and unparks it: no wake-up is lost.

use std::mem::{align_of, size_of, MaybeUninit};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::mailbox::{Mailbox, Posted};
use crate::spin::{self, spin_with, CpuHint, History, Waiter};
use crate::sync::{self, AtomicU32, Thread, UnsafeCell};
use crate::unwind::{catch_panic, drop_caught, AbortOnUnwind};

/// The payload's storage: its alignment is declared here, not inherited
/// from a field type whose alignment varies by target (`u64` is 4-aligned
/// on i686), and `fits` reads it from this type.
#[repr(C, align(8))]
struct Payload([MaybeUninit<u8>; PAYLOAD]);

/// Bytes a closure, and separately its result, may take to travel inline.
pub(crate) const PAYLOAD: usize = 40;

// The hot part of the lane is laid out for an 8-aligned, 40-byte payload.
const _: () = assert!(align_of::<Payload>() == 8 && size_of::<Payload>() == PAYLOAD);

/// Answer status: the result is in the payload (or the caller's frame).
const OK: u32 = 1;
/// Answer status: the error is in `error`.
const ERR: u32 = 2;
/// Set by a caller about to park: the owner must unpark it.
const WAITING: u32 = 4;
const TAG_SHIFT: u32 = 3;
const FLAGS: u32 = (1 << TAG_SHIFT) - 1;

/// The answer tag of a post. Truncated to 29 bits: a caller only ever
/// compares it with its latest post, and the word always holds the
/// previous one's answer, so the two never collide.
fn tag(post: u64) -> u32 {
    (post << TAG_SHIFT) as u32
}

/// What the owner does with a post.
pub(crate) enum Action<'a, O> {
    /// Run the job with the owner's state.
    Run(&'a mut O),
    /// Drop the job unrun and answer with this error.
    Reject(Error),
}

/// How handling a post went, for the owner's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handled {
    Done,
    Panicked,
    Rejected,
}

/// The poster's view of the owner, for [`Lane::call`].
pub(crate) trait Owner {
    /// Called right after a post is published: wakes the owner if it
    /// sleeps. Must not unwind.
    fn posted(&self);
    /// Whether the owner is still certain to take every post published
    /// before this call. Read after publishing, with a SeqCst load that
    /// pairs with the owner's SeqCst close-and-fence before its last scan:
    /// either that scan sees the post, or this sees the owner closing.
    fn taking(&self) -> bool;
    /// Whether the owner has exited: it answered every post it took and
    /// will take no more.
    fn exited(&self) -> bool;
    /// The error for a post the owner never took.
    fn refusal(&self) -> Error;
    /// How this owner's callers' recent waits went (their spin budget).
    fn history(&self) -> &History {
        static UNTRACKED: History = History::new();
        &UNTRACKED
    }
}

/// Runs or rejects the job in a lane; monomorphised for its closure and
/// result types, and chosen by the caller who knows them.
/// It returns how the post was handled and the panics it contained
/// besides the job's own (destructors of captures and panic payloads).
type Handler<O> = unsafe fn(&Lane<O>, Action<'_, O>) -> (Handled, u32);

/// A mailbox's cargo. `repr(C)`: the first four fields follow the mailbox's
/// sequence number on its first cache line; the rest is touched only for
/// sampled timings, labels, errors and parking.
#[repr(C)]
pub(crate) struct Lane<O> {
    /// Written by the owner (the answer) and by a parking caller (WAITING).
    answer: AtomicU32,
    /// Whether `enqueued` holds this post's submission time.
    stamped: UnsafeCell<bool>,
    handler: UnsafeCell<Option<Handler<O>>>,
    /// The closure going in; the result (or pointers to both) coming out.
    payload: UnsafeCell<Payload>,
    /// The thread that owns this mailbox: the only one that ever parks on it.
    poster: Thread,
    /// Where the poster was when it last parked, and where the owner was
    /// when it answered such a post: hints for the other side's next wait.
    poster_cpu: CpuHint,
    owner_cpu: CpuHint,
    error: UnsafeCell<Option<Error>>,
    enqueued: UnsafeCell<Option<Instant>>,
    #[cfg(feature = "tracing")]
    label: UnsafeCell<Option<std::sync::Arc<str>>>,
}

// SAFETY: the cells are never accessed from two threads at once. The poster
// writes `stamped`, `handler`, `payload`, `enqueued` and `label` only while
// it has no post outstanding, and publishes them with the mailbox's
// sequence number (Release/Acquire); the owner touches them, and writes
// `error`, only between taking a post and answering it; the poster reads
// the payload and `error` only after seeing the answer (Acquire, paired
// with the owner's Release). What crosses threads is a `Send` closure and
// its `Send` result (enforced by `call`'s bounds) and an `Error`. `O` only
// appears in the handler's signature: no `O` is stored.
unsafe impl<O> Sync for Lane<O> {}

/// Whether a closure `G` and its result `R` both fit the payload.
const fn fits<G, R>() -> bool {
    fits_in::<G, Payload>() && fits_in::<R, Payload>()
}

/// Whether a `T` can be stored at the start of a `P`: size and alignment
/// both come from the storage type itself.
const fn fits_in<T, P>() -> bool {
    size_of::<T>() <= size_of::<P>() && align_of::<T>() <= align_of::<P>()
}

impl<O> Lane<O> {
    /// An empty lane for the thread `poster`.
    pub(crate) fn new(poster: Thread) -> Self {
        Lane {
            answer: AtomicU32::new(0),
            stamped: UnsafeCell::new(false),
            handler: UnsafeCell::new(None),
            payload: UnsafeCell::new(Payload([MaybeUninit::uninit(); PAYLOAD])),
            poster,
            poster_cpu: CpuHint::new(),
            owner_cpu: CpuHint::new(),
            error: UnsafeCell::new(None),
            enqueued: UnsafeCell::new(None),
            #[cfg(feature = "tracing")]
            label: UnsafeCell::new(None),
        }
    }

    /// Poster: runs `g` on the owner through `mailbox` and waits for the
    /// outcome: spinning for up to `spin`, then parking. If the owner is
    /// closing and never takes the post, `g` is dropped here and the
    /// owner's refusal returned.
    ///
    /// # Safety
    /// `mailbox` belongs to the calling thread (it is the lane's `poster`)
    /// and has no post outstanding, which holds when each call waits for
    /// its answer, as this one does. `owner` is the mailbox's owner and
    /// keeps its word: while [`Owner::taking`] it answers every post it
    /// sees (runs or rejects it), and it scans once more after it stops.
    pub(crate) unsafe fn call<G, R>(
        mailbox: &Mailbox<Lane<O>>,
        g: G,
        stamp: Option<Instant>,
        spin: Duration,
        owner: &impl Owner,
    ) -> Result<R, Error>
    where
        G: FnOnce(&mut O) -> R + Send,
        R: Send,
    {
        let lane = mailbox.lane();
        if fits::<G, R>() {
            // SAFETY: no post outstanding, so the owner is not touching the
            // payload; `fits` checked size and alignment (the payload is
            // 8-aligned).
            lane.payload.with_mut(|p| unsafe { p.cast::<G>().write(g) });
            // SAFETY: as above; the handler matches what the payload holds.
            unsafe { lane.load(handle_inline::<O, G, R>, stamp) };
            match lane.post_and_wait(mailbox, spin, owner) {
                // SAFETY: OK means the owner wrote an R over the closure and
                // is done with the payload (answer seen with Acquire).
                Answer::Ok => Ok(lane.payload.with_mut(|p| unsafe { p.cast::<R>().read() })),
                Answer::Err => Err(lane.take_error()),
                Answer::Untaken => {
                    // SAFETY: the owner exited without taking the post, so
                    // the closure is still in the payload and is ours.
                    lane.payload.with_mut(|p| drop(unsafe { p.cast::<G>().read() }));
                    Err(owner.refusal())
                }
            }
        } else {
            let mut g = Some(g);
            let mut r = MaybeUninit::<R>::uninit();
            let refs: (*mut Option<G>, *mut MaybeUninit<R>) = (&mut g, &mut r);
            // SAFETY: as above; two pointers fit the payload. They point
            // into this frame, which outlives the post: we return only after
            // the answer, and nothing between here and there can unwind.
            lane.payload
                .with_mut(|p| unsafe { p.cast::<(*mut Option<G>, *mut MaybeUninit<R>)>().write(refs) });
            // SAFETY: the handler matches what the payload holds.
            unsafe { lane.load(handle_by_ref::<O, G, R>, stamp) };
            match lane.post_and_wait(mailbox, spin, owner) {
                // SAFETY: OK means the owner wrote the result (and is done).
                Answer::Ok => Ok(unsafe { r.assume_init() }),
                Answer::Err => Err(lane.take_error()),
                // The closure, never taken, is still in `g`: dropped here.
                Answer::Untaken => Err(owner.refusal()),
            }
        }
    }

    /// Poster: sets what the owner needs besides the payload.
    ///
    /// # Safety
    /// No post outstanding (see `call`); `handler` matches the payload.
    unsafe fn load(&self, handler: Handler<O>, stamp: Option<Instant>) {
        // SAFETY: by the caller's contract the owner does not touch these
        // until the next post is published.
        self.handler.with_mut(|h| unsafe { *h = Some(handler) });
        // SAFETY: as above.
        self.stamped.with_mut(|s| unsafe { *s = stamp.is_some() });
        if stamp.is_some() {
            // SAFETY: as above.
            self.enqueued.with_mut(|e| unsafe { *e = stamp });
        }
        #[cfg(feature = "tracing")]
        // SAFETY: as above.
        self.label.with_mut(|l| unsafe { *l = crate::labels::current() });
    }

    /// Poster: publishes the loaded post and waits for its answer.
    fn post_and_wait(&self, mailbox: &Mailbox<Lane<O>>, spin: Duration, owner: &impl Owner) -> Answer {
        // From the publish on, the owner may hold this post's closure and,
        // by reference, the caller's frame: nothing may unwind out of here
        // before the answer (or the certainty that the post was never
        // taken), whatever a future edit adds.
        let region = AbortOnUnwind::new("a caller waiting for the owner to answer its post");
        let answer = self.wait_for_answer(mailbox, spin, owner);
        region.disarm();
        answer
    }

    /// `post_and_wait`'s body, run under its guard.
    fn wait_for_answer(&self, mailbox: &Mailbox<Lane<O>>, spin: Duration, owner: &impl Owner) -> Answer {
        let post = mailbox.publish();
        owner.posted();
        let want = tag(post);
        let answered = |a: u32| a & !FLAGS == want;
        if !owner.taking() {
            // Closing: the owner's last scan may have missed the post. Wait
            // for the answer or for the owner to be gone, whichever first.
            loop {
                // ORDERING: as in the spin below.
                if answered(self.answer.load(Ordering::Acquire)) {
                    break;
                }
                if owner.exited() {
                    // ORDERING: the exit happens after the owner's last
                    // answer (published by the exit's lock), so a re-read
                    // is final.
                    if answered(self.answer.load(Ordering::Acquire)) {
                        break;
                    }
                    return Answer::Untaken;
                }
                sync::park_timeout(Duration::from_micros(100));
            }
        }
        // ORDERING: Acquire pairs with the owner's Release in `handle`, so
        // the result written before the answer is visible.
        if let Err(_missed) = spin_with(
            || answered(self.answer.load(Ordering::Acquire)),
            spin,
            None,
            Some(owner.history()),
            || self.owner_cpu.get(),
            Waiter::Caller,
        ) {
            // Carried by the RMW below to an owner whose swap sees WAITING.
            self.poster_cpu.note_here();
            // ORDERING: AcqRel RMW on the answer word: if the owner's swap
            // came first we see the answer (and its writes); otherwise its
            // swap comes after and sees WAITING.
            let prev = self.answer.fetch_or(WAITING, Ordering::AcqRel);
            if !answered(prev) {
                // Woken by the owner's unpark (or spuriously: check again).
                loop {
                    sync::park();
                    // ORDERING: as in the spin above.
                    if answered(self.answer.load(Ordering::Acquire)) {
                        break;
                    }
                }
            }
            // The owner is done with the word until the next post: drop
            // the WAITING bit so that post's answer does not unpark us.
            // ORDERING: the next post's SeqCst publish orders this first.
            self.answer.fetch_and(!WAITING, Ordering::Relaxed);
        }
        // ORDERING: Acquire, as above (a re-read of a value already seen).
        if self.answer.load(Ordering::Acquire) & OK != 0 {
            Answer::Ok
        } else {
            Answer::Err
        }
    }

    /// Poster, after an ERR answer: the error the owner left.
    fn take_error(&self) -> Error {
        // SAFETY: after the answer the owner no longer touches `error`.
        self.error
            .with_mut(|e| unsafe { (*e).take() })
            .expect("an ERR answer always leaves an error")
    }

    /// Owner: the submission time of the post being handled, if sampled.
    pub(crate) fn enqueued(&self) -> Option<Instant> {
        // SAFETY: the owner reads these between taking the post and
        // answering it, when the poster does not write them.
        if self.stamped.with_mut(|s| unsafe { *s }) {
            // SAFETY: as above.
            self.enqueued.with_mut(|e| unsafe { *e })
        } else {
            None
        }
    }

    /// Owner: the label of the post being handled.
    #[cfg(feature = "tracing")]
    pub(crate) fn label(&self) -> Option<std::sync::Arc<str>> {
        // SAFETY: as in `enqueued`.
        self.label.with_mut(|l| unsafe { (*l).clone() })
    }

    /// Owner: leaves `error` for the poster (answered ERR).
    fn set_error(&self, error: Error) {
        // SAFETY: the owner writes `error` before answering; the poster
        // reads it only after the answer.
        self.error.with_mut(|e| unsafe { *e = Some(error) });
    }
}

/// How a post ended, seen by its poster.
enum Answer {
    /// The result is in the payload (or the poster's frame).
    Ok,
    /// The error is in `error`.
    Err,
    /// The owner exited without taking the post: the closure is untouched.
    Untaken,
}

/// Owner: handles a post: runs or rejects its job, leaves the outcome in
/// the lane, calls `before_answer` with it, and answers (unparking the
/// poster if it waits). After this returns the job is gone; the lane itself
/// stays (its mailbox outlives the post).
#[inline]
pub(crate) fn handle<O>(
    posted: &Posted<Lane<O>>,
    action: Action<'_, O>,
    before_answer: impl FnOnce(Handled),
) -> (Handled, u32) {
    // The poster's closure, and with a by-reference post its frame, are in
    // this thread's hands until the answer: no unwinding out of here.
    let region = AbortOnUnwind::new("the owner handling a posted job");
    let lane = posted.mailbox().lane();
    // SAFETY: the poster loaded the handler before publishing this post
    // (seen with Acquire by the scanner) and does not touch it until the
    // answer.
    let handler = lane.handler.with_mut(|h| unsafe { *h });
    let (handled, contained) = match handler {
        // SAFETY: the handler was loaded together with a payload of its
        // types, and this post is unanswered, so the payload is ours.
        Some(handler) => unsafe { handler(lane, action) },
        None => {
            // Unreachable: every post carries a handler. Answer anyway.
            lane.set_error(Error::Panicked("a post without a handler".into()));
            (Handled::Panicked, 0)
        }
    };
    before_answer(handled);
    let status = if handled == Handled::Done { OK } else { ERR };
    // ORDERING: Release publishes the result or error to the poster's
    // Acquire; Acquire (and the RMW) make a WAITING set before this visible.
    let prev = lane.answer.swap(tag(posted.seq()) | status, Ordering::AcqRel);
    if prev & WAITING != 0 {
        // Hints for both sides' next waits: the poster noted its CPU
        // before the WAITING our swap read.
        lane.owner_cpu.note_here();
        spin::note_poster(lane.poster_cpu.get());
        // The lane lives in the mailbox (held by the owner's snapshot), not
        // in the poster's frame, so touching it after the answer is fine.
        lane.poster.unpark();
    } else {
        spin::note_poster(spin::Partner::UNKNOWN);
    }
    region.disarm();
    (handled, contained)
}

/// Runs (or drops) the closure of a post, catching a panic, its payload's
/// destructor included: its result, or how it ended without one (the
/// error is then left in the lane); and the panics contained besides the
/// job's own.
fn run_or_reject<O, G, R>(g: G, action: Action<'_, O>, lane: &Lane<O>) -> (Result<R, Handled>, u32)
where
    G: FnOnce(&mut O) -> R,
{
    match action {
        Action::Run(o) => {
            // The payload of a panic goes to the poster in the error.
            let ran = catch_panic(|| crate::waits::in_job(|| g(o)));
            crate::waits::end_job(); // before the answer: see `end_job`
            match ran {
                Ok(r) => (Ok(r), 0),
                Err(panic) => {
                    lane.set_error(Error::Panicked(panic));
                    (Err(Handled::Panicked), 0)
                }
            }
        }
        Action::Reject(error) => {
            // A panicking destructor must not leave the poster unanswered.
            let contained = drop_caught(g);
            lane.set_error(error);
            (Err(Handled::Rejected), contained)
        }
    }
}

/// The handler for a closure and result carried in the payload.
///
/// # Safety
/// The payload holds a `G` written by the poster for this unanswered post.
unsafe fn handle_inline<O, G, R>(lane: &Lane<O>, action: Action<'_, O>) -> (Handled, u32)
where
    G: FnOnce(&mut O) -> R,
{
    // SAFETY: by the contract; moved out once, so the bytes may be reused.
    let g = lane.payload.with_mut(|p| unsafe { p.cast::<G>().read() });
    match run_or_reject(g, action, lane) {
        (Ok(r), contained) => {
            // SAFETY: the closure was moved out; `fits` checked that R fits.
            lane.payload.with_mut(|p| unsafe { p.cast::<R>().write(r) });
            (Handled::Done, contained)
        }
        (Err(ended), contained) => (ended, contained),
    }
}

/// The handler for a closure and result in the poster's frame.
///
/// # Safety
/// The payload holds pointers, written by the poster for this unanswered
/// post, to a `Some(G)` and to room for an `R`, both alive until the answer.
unsafe fn handle_by_ref<O, G, R>(lane: &Lane<O>, action: Action<'_, O>) -> (Handled, u32)
where
    G: FnOnce(&mut O) -> R,
{
    // SAFETY: by the contract.
    let (g, r) = lane
        .payload
        .with_mut(|p| unsafe { p.cast::<(*mut Option<G>, *mut MaybeUninit<R>)>().read() });
    // SAFETY: the poster does not touch its closure until the answer.
    let Some(g) = (unsafe { (*g).take() }) else {
        // Unreachable: a post is handled once. Answer rather than panic.
        lane.set_error(Error::Panicked("a post handled twice".into()));
        return (Handled::Panicked, 0);
    };
    match run_or_reject(g, action, lane) {
        (Ok(value), contained) => {
            // SAFETY: the result's room is alive and untouched until the
            // answer.
            unsafe { (*r).write(value) };
            (Handled::Done, contained)
        }
        (Err(ended), contained) => (ended, contained),
    }
}

/// The owner side of the protocol tests: handles `posts` posts to `mb`
/// (runs them, or rejects them all when `reject`), calling `idle` while
/// none is waiting; returns the state the jobs ran on.
#[cfg(test)]
fn serve_posts(mb: &Mailbox<Lane<u64>>, seen: u64, posts: u64, reject: bool, idle: impl Fn()) -> u64 {
    let (mut seen, mut state, mut handled) = (seen, 0u64, 0);
    while handled < posts {
        match mb.take_for_test(&mut seen) {
            Some(p) => {
                let action = if reject {
                    Action::Reject(Error::Shutdown)
                } else {
                    Action::Run(&mut state)
                };
                handle(&p, action, |_| ());
                handled += 1;
            }
            None => idle(),
        }
    }
    state
}

/// An owner that takes every post (protocol tests).
#[cfg(test)]
struct Open;

#[cfg(test)]
impl Owner for Open {
    fn posted(&self) {}
    fn taking(&self) -> bool {
        true
    }
    fn exited(&self) -> bool {
        false
    }
    fn refusal(&self) -> Error {
        Error::Closed
    }
}

#[cfg(all(test, not(pinned_loom)))]
#[path = "lane_tests.rs"]
mod tests;

#[cfg(all(test, pinned_loom))]
#[path = "lane_loom.rs"]
mod loom_tests;
