//! The acknowledgement rule for line-based sessions (V1, Kaspa): an accepted share's answer, and every line queued
//! after it, goes out only once the driver reports the share durable in the share log. (SV2
//! keeps the same rule with its own plaintext queue: its outbox is encrypted.)

use std::collections::VecDeque;

/// Answers waiting for the share log.
#[derive(Debug, Default)]
pub struct AckHold {
    /// Where each accepted share's answer sits in the outbox (lines from its front), oldest
    /// first, for the shares the driver has not reported on yet. Empty (no allocation) on an
    /// idle connection.
    pending: VecDeque<usize>,
}

impl AckHold {
    /// A share was accepted while `queued` lines were in the outbox: those may still go; its
    /// answer, queued next (at `queued`), waits.
    pub fn accepted(&mut self, queued: usize) {
        self.pending.push_back(queued);
    }

    /// How many of the `queued` lines may go out now: everything before the oldest waiting
    /// answer.
    pub fn releasable(&self, queued: usize) -> usize {
        match self.pending.front() {
            None => queued,
            Some(&at) => at.min(queued),
        }
    }

    /// `n` lines went out from the front.
    pub fn sent(&mut self, n: usize) {
        for at in &mut self.pending {
            *at = at.saturating_sub(n);
        }
    }

    /// Accepted shares waiting for the driver's word.
    pub fn awaiting(&self) -> u32 {
        u32::try_from(self.pending.len()).unwrap_or(u32::MAX)
    }

    /// The driver's word on the oldest unreported share. `Some(at)` when it was not
    /// recorded: its answer is line `at` of the outbox, for the session to replace with an
    /// error.
    pub fn recorded(&mut self, durable: bool) -> Option<usize> {
        let at = self.pending.pop_front()?;
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
        (!durable).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_waits_for_its_own_share() {
        let mut hold = AckHold::default();
        assert_eq!(hold.releasable(3), 3);
        hold.accepted(2); // two lines ahead of the first answer
        hold.accepted(5);
        assert_eq!(hold.releasable(7), 2);
        hold.sent(2);
        assert_eq!(hold.releasable(5), 0);
        assert_eq!(hold.recorded(true), None);
        // The first is durable: the lines up to the second answer may go.
        assert_eq!(hold.releasable(5), 3);
        assert_eq!(hold.recorded(true), None);
        assert_eq!(hold.releasable(5), 5);
        assert_eq!(hold.recorded(true), None, "nothing to report");
    }

    #[test]
    fn an_unrecorded_share_names_where_its_answer_is() {
        let mut hold = AckHold::default();
        hold.accepted(4);
        hold.accepted(6);
        hold.sent(1);
        assert_eq!(hold.recorded(false), Some(3));
        assert_eq!(hold.awaiting(), 1);
        assert_eq!(hold.recorded(true), None);
        assert_eq!(hold.awaiting(), 0);
    }
}
