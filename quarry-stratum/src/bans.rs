//! Temporary bans for abusive peers, sans-IO: offences and time in, ban decisions out.
//!
//! Each IP address has a score that offences add to and that halves every `half_life_ms`. A
//! score that reaches `threshold` bans the address for `ban_ms`: its connections close and new
//! ones are refused. Stale and duplicate shares score nothing: NiceHash and proxies send those
//! in normal operation, and a pool must not ban its biggest customers for them.

use std::collections::HashMap;
use std::net::IpAddr;

use quarry_work::share::ShareReject;

/// Ban policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BanPolicy {
    /// Score at which an address is banned.
    pub threshold: f64,
    /// How long a ban lasts.
    pub ban_ms: u64,
    /// The score halves every this long.
    pub half_life_ms: u64,
    /// Most addresses tracked; past it the lowest scores are forgotten first.
    pub max_tracked: usize,
}

impl Default for BanPolicy {
    fn default() -> Self {
        BanPolicy {
            threshold: 100.0,
            ban_ms: 600_000,
            half_life_ms: 300_000,
            max_tracked: 100_000,
        }
    }
}

/// Something a peer did that counts against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A share the pool refused, for `reason`.
    BadShare(ShareReject),
    /// The connection closed for sending lines that are not requests, or over-long ones.
    Garbage,
    /// The connection closed for exceeding its request budget.
    Flood,
    /// The connection broke the protocol (SV2: a message out of place, a bad frame).
    ProtocolViolation,
    /// Connected and never authorized in time.
    AuthTimeout,
}

impl Offence {
    /// Points it scores.
    pub fn points(self) -> f64 {
        match self {
            // Normal for proxies and after a new block: never counted.
            Offence::BadShare(ShareReject::Stale | ShareReject::Duplicate) => 0.0,
            // A miner that reconnects may submit for jobs of its previous connection.
            Offence::BadShare(ShareReject::JobNotFound) => 0.5,
            Offence::BadShare(ShareReject::LowDifficulty) => 1.0,
            Offence::BadShare(_) => 2.0,
            Offence::AuthTimeout => 5.0,
            Offence::Garbage | Offence::ProtocolViolation => 25.0,
            Offence::Flood => 50.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f64,
    at_ms: u64,
    banned_until_ms: u64,
}

impl Entry {
    /// Whole seconds since the score was last brought up to date: offences within one second
    /// add up exactly (four garbage connections in a burst are 100 points, not 99.999).
    fn elapsed_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.at_ms) / 1000
    }

    fn decayed(&self, now_ms: u64, half_life_ms: u64) -> f64 {
        let elapsed_ms = (self.elapsed_secs(now_ms) * 1000) as f64;
        self.score * 0.5f64.powf(elapsed_ms / half_life_ms.max(1) as f64)
    }
}

/// One address's standing, for the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The address.
    pub ip: IpAddr,
    /// Its score now.
    pub score: f64,
    /// Banned until then (monotonic milliseconds), when banned.
    pub banned_until_ms: Option<u64>,
}

/// Scores and bans per IP address.
#[derive(Debug, Clone)]
pub struct BanBook {
    policy: BanPolicy,
    entries: HashMap<IpAddr, Entry>,
    banned_total: u64,
}

impl BanBook {
    /// An empty book.
    pub fn new(policy: BanPolicy) -> BanBook {
        BanBook {
            policy,
            entries: HashMap::new(),
            banned_total: 0,
        }
    }

    /// Counts `offence` against `ip`; returns the ban's end when this offence banned it.
    pub fn offend(&mut self, ip: IpAddr, offence: Offence, now_ms: u64) -> Option<u64> {
        let points = offence.points();
        if points <= 0.0 {
            return None;
        }
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.policy.max_tracked {
            self.forget_lowest(now_ms);
        }
        let policy = self.policy;
        let entry = self.entries.entry(ip).or_insert(Entry {
            score: 0.0,
            at_ms: now_ms,
            banned_until_ms: 0,
        });
        entry.score = entry.decayed(now_ms, policy.half_life_ms) + points;
        entry.at_ms += entry.elapsed_secs(now_ms) * 1000;
        if entry.banned_until_ms > now_ms || entry.score < policy.threshold {
            return None;
        }
        entry.banned_until_ms = now_ms.saturating_add(policy.ban_ms);
        // The slate is clean once the ban is served.
        entry.score = 0.0;
        self.banned_total += 1;
        Some(entry.banned_until_ms)
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.entries
            .get(&ip)
            .is_some_and(|e| e.banned_until_ms > now_ms)
    }

    /// Every tracked address with a score or a ban, highest score first; forgets the rest.
    pub fn standings(&mut self, now_ms: u64) -> Vec<Standing> {
        let half_life = self.policy.half_life_ms;
        self.entries
            .retain(|_, e| e.banned_until_ms > now_ms || e.decayed(now_ms, half_life) >= 0.01);
        let mut out: Vec<Standing> = self
            .entries
            .iter()
            .map(|(ip, e)| Standing {
                ip: *ip,
                score: e.decayed(now_ms, half_life),
                banned_until_ms: (e.banned_until_ms > now_ms).then_some(e.banned_until_ms),
            })
            .collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.ip.cmp(&b.ip)));
        out
    }

    /// Addresses banned now.
    pub fn banned_now(&self, now_ms: u64) -> usize {
        self.entries
            .values()
            .filter(|e| e.banned_until_ms > now_ms)
            .count()
    }

    /// Bans imposed since start.
    pub fn banned_total(&self) -> u64 {
        self.banned_total
    }

    /// Frees room: the unbanned eighth of the book with the lowest scores goes, in one pass.
    /// A flood from new addresses then costs a scan per `max_tracked / 8` of them instead of
    /// one per address, all under the book's lock.
    fn forget_lowest(&mut self, now_ms: u64) {
        let half_life = self.policy.half_life_ms;
        let mut scores: Vec<(f64, IpAddr)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.banned_until_ms <= now_ms)
            .map(|(ip, e)| (e.decayed(now_ms, half_life), *ip))
            .collect();
        let drop = (self.policy.max_tracked / 8).clamp(1, scores.len().max(1));
        if scores.len() < drop {
            return;
        }
        scores.select_nth_unstable_by(drop - 1, |a, b| a.0.total_cmp(&b.0));
        for (_, ip) in &scores[..drop] {
            self.entries.remove(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn stale_and_duplicate_shares_never_ban() {
        let mut book = BanBook::new(BanPolicy::default());
        for i in 0..100_000 {
            book.offend(IP, Offence::BadShare(ShareReject::Stale), i);
            book.offend(IP, Offence::BadShare(ShareReject::Duplicate), i);
        }
        assert!(!book.is_banned(IP, 100_000));
        assert!(book.standings(100_000).is_empty());
    }

    #[test]
    fn invalid_shares_ban_for_the_ban_time_then_the_slate_is_clean() {
        let mut book = BanBook::new(BanPolicy::default());
        let mut banned_at = None;
        for i in 0..200u64 {
            // A burst: within one second.
            if let Some(until) =
                book.offend(IP, Offence::BadShare(ShareReject::LowDifficulty), 7 + i)
            {
                banned_at = Some((i, until));
                break;
            }
        }
        let (count, until) = banned_at.expect("banned");
        assert_eq!(count, 99, "the 100th low-difficulty share in a burst bans");
        let at = 7 + count;
        assert_eq!(until, at + 600_000);
        assert!(book.is_banned(IP, until - 1));
        assert!(!book.is_banned(OTHER, at));
        assert!(!book.is_banned(IP, until));
        assert_eq!(book.banned_total(), 1);
        // Offences while banned do not extend it.
        assert_eq!(book.offend(IP, Offence::Flood, at + 1), None);
    }

    #[test]
    fn scores_decay_so_a_slow_trickle_never_bans() {
        let mut book = BanBook::new(BanPolicy::default());
        // One low-difficulty share a minute for a day.
        for minute in 0..1440u64 {
            assert_eq!(
                book.offend(
                    IP,
                    Offence::BadShare(ShareReject::LowDifficulty),
                    minute * 60_000
                ),
                None
            );
        }
        let score = book.standings(1440 * 60_000)[0].score;
        assert!(score < 10.0, "{score}");
        // Half-life: 5 minutes.
        let mut book = BanBook::new(BanPolicy::default());
        book.offend(IP, Offence::Flood, 0);
        let half = book.standings(300_000)[0].score;
        assert!((half - 25.0).abs() < 1e-9, "{half}");
    }

    #[test]
    fn two_floods_ban() {
        let mut book = BanBook::new(BanPolicy::default());
        assert_eq!(book.offend(IP, Offence::Flood, 1), None);
        assert_eq!(book.offend(IP, Offence::Flood, 1), Some(600_001));
        assert_eq!(book.banned_now(2), 1);
        let standings = book.standings(2);
        assert_eq!(standings[0].banned_until_ms, Some(600_001));
    }

    #[test]
    fn the_book_is_bounded() {
        let mut book = BanBook::new(BanPolicy {
            max_tracked: 100,
            ..BanPolicy::default()
        });
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            book.offend(ip, Offence::AuthTimeout, u64::from(i));
        }
        assert!(book.standings(10_000).len() <= 100);
    }

    /// A full book forgets its lowest scores first: the worst offenders and the banned stay.
    #[test]
    fn a_full_book_forgets_the_lowest_scores() {
        let mut book = BanBook::new(BanPolicy {
            max_tracked: 16,
            ..BanPolicy::default()
        });
        let banned = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
        let worst = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2));
        book.offend(banned, Offence::Flood, 0);
        assert!(book.offend(banned, Offence::Flood, 0).is_some());
        book.offend(worst, Offence::Flood, 0);
        for i in 0..1_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            book.offend(ip, Offence::AuthTimeout, 1);
        }
        let standings = book.standings(2);
        assert!(standings.len() <= 16);
        assert!(standings.iter().any(|s| s.ip == banned));
        assert!(standings.iter().any(|s| s.ip == worst));
    }
}
