//! One room's position in its stream on this node: which publications the hub gets, in
//! offset order, and when this node must fetch missing ones from the stream or give up on
//! the room (1012). Pure: the broker does the I/O the decisions ask for.
//!
//! Rules: a publication at or below the last one delivered is dropped; the next one is
//! delivered; a later one means some were lost on the way (pub/sub is at-most-once): live
//! traffic is held back while the missing range is read from the stream, then delivered in
//! order. The gap no longer in the stream, or another epoch, means the room's local members
//! missed what they can no longer get: the room is *lost* and the sequencer follows the
//! stream's new position.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::broker::Publication;

/// Most live publications held back while a gap is read from the stream. Past it the held
/// ones are dropped and read from the stream too once the fill is done (they are there unless
/// the history is shorter than that, which the next fill notices).
pub const MAX_HELD: usize = 4096;

/// What the broker must do after a sequencer step.
#[derive(Debug, Default)]
pub struct Step {
    /// Hand these to the hub, in this order.
    pub deliver: Vec<Arc<Publication>>,
    /// Read the stream after this offset, then call [`Sequencer::filled`].
    pub fill: Option<u64>,
    /// The room's local members missed what they cannot get back: close them (1012).
    pub lost: bool,
}

/// The stream as a fill read it: the room's epoch and last offset, and the entries after
/// the offset asked for (in order).
#[derive(Debug)]
pub struct StreamRead {
    /// `None`: the room is gone from Redis.
    pub epoch: Option<Arc<str>>,
    pub offset: u64,
    pub entries: Vec<Arc<Publication>>,
}

#[derive(Debug)]
enum State {
    /// Waiting for the room's position (just subscribed): everything is held.
    Baseline,
    /// Delivering live traffic.
    Live,
    /// A fill is under way: live traffic is held.
    Filling,
}

#[derive(Debug)]
pub struct Sequencer {
    epoch: Option<Arc<str>>,
    last: u64,
    state: State,
    held: BTreeMap<u64, Arc<Publication>>,
    /// Held publications were dropped: fill again after the current fill.
    overflowed: bool,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sequencer {
    /// A sequencer waiting for [`Sequencer::baseline`].
    pub fn new() -> Sequencer {
        Sequencer {
            epoch: None,
            last: 0,
            state: State::Baseline,
            held: BTreeMap::new(),
            overflowed: false,
        }
    }

    /// The epoch this node follows, if the room had one.
    pub fn epoch(&self) -> Option<&Arc<str>> {
        self.epoch.as_ref()
    }

    /// The last offset delivered.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether the position at subscribe time is still awaited.
    pub fn waits_for_baseline(&self) -> bool {
        matches!(self.state, State::Baseline)
    }

    /// Whether a fill or the baseline is awaited (a position check then waits too).
    pub fn busy(&self) -> bool {
        !matches!(self.state, State::Live)
    }

    /// The room's position when this node subscribed: what was published up to it is not
    /// for this node's members (they recover it themselves).
    pub fn baseline(&mut self, epoch: Option<Arc<str>>, offset: u64) -> Step {
        self.epoch = epoch;
        self.last = offset;
        self.state = State::Live;
        self.release(Step::default())
    }

    /// The room's epoch as a join read it, for a sequencer that subscribed before the room
    /// had one (its members hold that epoch now).
    pub fn adopt(&mut self, epoch: &Arc<str>) {
        if self.epoch.is_none() && !matches!(self.state, State::Baseline) {
            self.epoch = Some(epoch.clone());
        }
    }

    /// A live publication.
    pub fn offer(&mut self, p: Arc<Publication>) -> Step {
        if !matches!(self.state, State::Live) {
            self.hold(p);
            return Step::default();
        }
        let mut step = Step::default();
        match &self.epoch {
            Some(e) if **e == *p.epoch => {}
            Some(_) => {
                // The room started afresh under this node's members.
                step.lost = true;
                self.epoch = Some(p.epoch.clone());
                self.last = p.offset.saturating_sub(1);
            }
            None => {
                // The room had no stream when this node subscribed: this is its first epoch.
                self.epoch = Some(p.epoch.clone());
            }
        }
        self.accept(p, step)
    }

    /// A position check: the room's epoch and last offset as Redis has them now. An offset
    /// other than the last delivered one in the same epoch asks for a fill: a higher one
    /// brings what this node missed; a lower one means Redis went back in time (an older
    /// snapshot), which the fill script turns into a new epoch (and the fill into a loss), so
    /// no client recovers across the hole.
    pub fn check(&mut self, epoch: Option<Arc<str>>, offset: u64) -> Check {
        if self.busy() {
            return Check::InStep;
        }
        match (&self.epoch, epoch) {
            (Some(mine), Some(theirs)) if *mine == theirs => {
                if offset == self.last {
                    return Check::InStep;
                }
                self.state = State::Filling;
                Check::Fill(self.last)
            }
            (None, Some(theirs)) => {
                // Subscribed before the room had a stream; its first messages never came.
                self.epoch = Some(theirs);
                if offset > self.last {
                    self.state = State::Filling;
                    Check::Fill(self.last)
                } else {
                    Check::InStep
                }
            }
            (None, None) => Check::InStep,
            (Some(_), theirs) => {
                self.epoch = theirs;
                self.last = offset;
                Check::Lost
            }
        }
    }

    /// A fill could not be made (Redis out of reach): live again, waiting for the next
    /// position check; what was held is in the stream.
    pub fn abandon_fill(&mut self) {
        self.state = State::Live;
        self.held.clear();
        self.overflowed = false;
    }

    /// The answer to a fill.
    pub fn filled(&mut self, read: StreamRead) -> Step {
        let mut step = Step::default();
        self.state = State::Live;
        let same_epoch = matches!((&self.epoch, &read.epoch), (Some(a), Some(b)) if a == b);
        let first = read.entries.first().map(|p| p.offset);
        let complete = read.offset <= self.last || first == Some(self.last + 1);
        if !same_epoch || !complete {
            step.lost = true;
            self.epoch = read.epoch;
            self.last = read.offset;
            self.held
                .retain(|_, p| Some(&p.epoch) == self.epoch.as_ref());
            return self.release(step);
        }
        for p in read.entries {
            if p.offset == self.last + 1 {
                self.last = p.offset;
                step.deliver.push(p);
            }
        }
        if std::mem::take(&mut self.overflowed) && read.offset > self.last {
            self.state = State::Filling;
            step.fill = Some(self.last);
            return step;
        }
        self.release(step)
    }

    /// Goes back to waiting for a baseline (the subscription was lost and is being made
    /// again).
    pub fn rebase(&mut self) {
        self.state = State::Baseline;
    }

    fn hold(&mut self, p: Arc<Publication>) {
        if self.held.len() >= MAX_HELD {
            self.held.clear();
            self.overflowed = true;
        }
        self.held.insert(p.offset, p);
    }

    fn accept(&mut self, p: Arc<Publication>, mut step: Step) -> Step {
        if p.offset <= self.last {
            return step;
        }
        if p.offset == self.last + 1 {
            self.last = p.offset;
            step.deliver.push(p);
            return step;
        }
        self.state = State::Filling;
        step.fill = Some(self.last);
        self.held.insert(p.offset, p);
        step
    }

    /// Live again: the held publications go through the usual rules, in order.
    fn release(&mut self, mut step: Step) -> Step {
        if self.overflowed {
            self.overflowed = false;
            self.held.clear();
            self.state = State::Filling;
            step.fill = Some(self.last);
            return step;
        }
        let held = std::mem::take(&mut self.held);
        for (_, p) in held {
            if !matches!(self.state, State::Live) {
                self.held.insert(p.offset, p);
                continue;
            }
            if self.epoch.is_none() {
                self.epoch = Some(p.epoch.clone());
            }
            if Some(&p.epoch) != self.epoch.as_ref() {
                continue;
            }
            step = self.accept(p, step);
        }
        step
    }
}

/// The outcome of a position check.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    InStep,
    /// Read the stream after this offset, then call [`Sequencer::filled`].
    Fill(u64),
    /// Another epoch, or the room is gone: close the local members (1012).
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn p(epoch: &str, offset: u64) -> Arc<Publication> {
        Arc::new(Publication::new(
            Arc::from(epoch),
            offset,
            Utf8Bytes::from(format!("m{offset}")),
            None,
        ))
    }

    fn offsets(step: &Step) -> Vec<u64> {
        step.deliver.iter().map(|p| p.offset).collect()
    }

    fn live(epoch: &str, last: u64) -> Sequencer {
        let mut s = Sequencer::new();
        s.baseline(Some(Arc::from(epoch)), last);
        s
    }

    #[test]
    fn drops_what_was_delivered_and_delivers_the_next() {
        let mut s = live("e", 3);
        assert!(offsets(&s.offer(p("e", 3))).is_empty());
        assert!(offsets(&s.offer(p("e", 2))).is_empty());
        assert_eq!(offsets(&s.offer(p("e", 4))), [4]);
        assert_eq!(offsets(&s.offer(p("e", 5))), [5]);
        assert!(offsets(&s.offer(p("e", 5))).is_empty());
    }

    #[test]
    fn a_gap_is_filled_from_the_stream_then_held_traffic_follows_in_order() {
        let mut s = live("e", 1);
        let step = s.offer(p("e", 4));
        assert_eq!((offsets(&step), step.fill), (vec![], Some(1)));
        // Live traffic during the fill waits.
        assert!(offsets(&s.offer(p("e", 6))).is_empty());
        assert!(offsets(&s.offer(p("e", 5))).is_empty());
        let step = s.filled(StreamRead {
            epoch: Some(Arc::from("e")),
            offset: 4,
            entries: vec![p("e", 2), p("e", 3), p("e", 4)],
        });
        assert!(!step.lost);
        assert_eq!(offsets(&step), [2, 3, 4, 5, 6]);
        assert_eq!(s.last(), 6);
    }

    #[test]
    fn a_gap_trimmed_from_the_stream_or_a_new_epoch_is_lost() {
        let mut s = live("e", 1);
        s.offer(p("e", 9));
        let step = s.filled(StreamRead {
            epoch: Some(Arc::from("e")),
            offset: 9,
            entries: vec![p("e", 5), p("e", 9)],
        });
        assert!(step.lost && step.deliver.is_empty());
        assert_eq!(s.last(), 9);
        // In step again afterwards.
        assert_eq!(offsets(&s.offer(p("e", 10))), [10]);

        let mut s = live("e", 1);
        s.offer(p("e", 3));
        let step = s.filled(StreamRead {
            epoch: Some(Arc::from("f")),
            offset: 1,
            entries: vec![],
        });
        assert!(step.lost);
        assert_eq!(offsets(&s.offer(p("f", 2))), [2]);
    }

    #[test]
    fn another_epoch_on_the_channel_is_lost() {
        let mut s = live("e", 5);
        let step = s.offer(p("f", 1));
        assert!(step.lost);
        assert_eq!(offsets(&step), [1]);
        assert_eq!(s.epoch().map(|e| &**e), Some("f"));
    }

    #[test]
    fn traffic_before_the_baseline_waits_for_it() {
        let mut s = Sequencer::new();
        assert!(offsets(&s.offer(p("e", 3))).is_empty());
        assert!(offsets(&s.offer(p("e", 4))).is_empty());
        // The position read after subscribing already counted offset 3.
        let step = s.baseline(Some(Arc::from("e")), 3);
        assert_eq!(offsets(&step), [4]);
        // A room without a stream yet takes the epoch of its first message.
        let mut s = Sequencer::new();
        s.offer(p("e", 1));
        assert_eq!(offsets(&s.baseline(None, 0)), [1]);
    }

    #[test]
    fn position_checks_fill_lose_or_see_offsets_going_backwards() {
        let mut s = live("e", 5);
        assert_eq!(s.check(Some(Arc::from("e")), 5), Check::InStep);
        // Fewer offsets than delivered: the fill script makes that a new epoch.
        assert_eq!(s.check(Some(Arc::from("e")), 3), Check::Fill(5));
        s.abandon_fill();
        assert_eq!(s.check(Some(Arc::from("e")), 7), Check::Fill(5));
        assert_eq!(
            s.check(Some(Arc::from("e")), 9),
            Check::InStep,
            "one fill at a time"
        );
        let step = s.filled(StreamRead {
            epoch: Some(Arc::from("e")),
            offset: 7,
            entries: vec![p("e", 6), p("e", 7)],
        });
        assert_eq!(offsets(&step), [6, 7]);
        assert_eq!(s.check(None, 0), Check::Lost);
        let mut s = live("e", 5);
        assert_eq!(s.check(Some(Arc::from("f")), 2), Check::Lost);
        assert_eq!(s.last(), 2);
    }

    #[test]
    fn held_traffic_past_the_cap_is_read_from_the_stream_instead() {
        let mut s = live("e", 0);
        s.offer(p("e", 2));
        for o in 3..(3 + MAX_HELD as u64 + 10) {
            s.offer(p("e", o));
        }
        let top = 2 + MAX_HELD as u64 + 10;
        let step = s.filled(StreamRead {
            epoch: Some(Arc::from("e")),
            offset: top,
            entries: vec![p("e", 1), p("e", 2)],
        });
        assert_eq!(offsets(&step), [1, 2]);
        assert_eq!(step.fill, Some(2), "the dropped ones are read next");
        let step = s.filled(StreamRead {
            epoch: Some(Arc::from("e")),
            offset: top,
            entries: (3..=top).map(|o| p("e", o)).collect(),
        });
        assert_eq!(step.deliver.len() as u64, top - 2);
        assert_eq!(s.last(), top);
    }
}
