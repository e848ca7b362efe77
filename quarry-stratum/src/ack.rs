//! The acknowledgement rule, for every session: an accepted share's answer, and everything a
//! session queues after it, goes out only once the driver reports the share durable in the
//! share log. Sessions count their outbox in their own units (V1 lines, SV2 bytes).

/// Answers waiting for the share log.
#[derive(Debug, Default)]
pub(crate) struct AckHold {
    /// Accepted shares the driver has not reported on yet.
    unrecorded: u32,
    /// While `unrecorded > 0`: how many outbox units ahead of the first unrecorded share's
    /// answer may still go out.
    sendable: usize,
}

impl AckHold {
    /// A share was accepted while `queued` units were in the outbox: those may still go; its
    /// answer, queued next, waits.
    pub(crate) fn accepted(&mut self, queued: usize) {
        if self.unrecorded == 0 {
            self.sendable = queued;
        }
        self.unrecorded += 1;
    }

    /// How many of the `queued` units may go out now.
    pub(crate) fn releasable(&self, queued: usize) -> usize {
        match self.unrecorded {
            0 => queued,
            _ => self.sendable.min(queued),
        }
    }

    /// `n` units went out.
    pub(crate) fn sent(&mut self, n: usize) {
        if self.unrecorded > 0 {
            self.sendable = self.sendable.saturating_sub(n);
        }
    }

    /// Accepted shares waiting for the driver's word.
    pub(crate) fn awaiting(&self) -> u32 {
        self.unrecorded
    }

    /// The driver's word on the oldest unreported share. `Some(keep)` when it was not
    /// recorded: the session keeps only its first `keep` outbox units and closes.
    pub(crate) fn recorded(&mut self, durable: bool) -> Option<usize> {
        if self.unrecorded == 0 {
            return None;
        }
        if !durable {
            self.unrecorded = 0;
            return Some(std::mem::take(&mut self.sendable));
        }
        self.unrecorded -= 1;
        if self.unrecorded == 0 {
            self.sendable = 0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_wait_for_every_share_before_them() {
        let mut hold = AckHold::default();
        assert_eq!(hold.releasable(3), 3);
        hold.accepted(2); // two lines ahead of the first answer
        hold.accepted(5);
        assert_eq!(hold.releasable(7), 2);
        hold.sent(2);
        assert_eq!(hold.releasable(5), 0);
        assert_eq!(hold.recorded(true), None);
        assert_eq!(
            hold.releasable(5),
            0,
            "the second share is still unrecorded"
        );
        assert_eq!(hold.recorded(true), None);
        assert_eq!(hold.releasable(5), 5);
        assert_eq!(hold.recorded(true), None, "nothing to report");
    }

    #[test]
    fn an_unrecorded_share_cuts_the_outbox_where_its_answer_starts() {
        let mut hold = AckHold::default();
        hold.accepted(4);
        hold.sent(1);
        assert_eq!(hold.recorded(false), Some(3));
        assert_eq!(hold.awaiting(), 0);
    }
}
