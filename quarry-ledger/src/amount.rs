//! Money as types: [`Sat`] (a chain's base unit, what transactions pay) and [`Msat`] (what
//! balances are kept in, so that PPS credits for tiny shares lose nothing). Mixing them up, or
//! an amount with a count, does not compile.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

macro_rules! amount {
    ($name:ident, $unit:literal) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            Default,
            Serialize,
            Deserialize,
        )]
        #[serde(transparent)]
        #[doc = concat!("An amount in ", $unit, ".")]
        pub struct $name(pub u64);

        impl $name {
            /// Nothing.
            pub const ZERO: $name = $name(0);

            /// The amount as the database stores it (`BIGINT`), saturating at `i64::MAX`.
            pub fn to_db(self) -> i64 {
                i64::try_from(self.0).unwrap_or(i64::MAX)
            }

            /// From the database; a negative value (never written) reads as zero.
            pub fn from_db(value: i64) -> Self {
                $name(u64::try_from(value).unwrap_or(0))
            }

            /// `self - other`, or `None` below zero.
            pub fn checked_sub(self, other: $name) -> Option<$name> {
                self.0.checked_sub(other.0).map($name)
            }
        }

        /// Saturating: money never wraps.
        impl Add for $name {
            type Output = $name;
            fn add(self, other: $name) -> $name {
                $name(self.0.saturating_add(other.0))
            }
        }

        impl AddAssign for $name {
            fn add_assign(&mut self, other: $name) {
                *self = *self + other;
            }
        }

        /// Saturating at zero.
        impl Sub for $name {
            type Output = $name;
            fn sub(self, other: $name) -> $name {
                $name(self.0.saturating_sub(other.0))
            }
        }

        impl Sum for $name {
            fn sum<I: Iterator<Item = $name>>(iter: I) -> $name {
                iter.fold($name::ZERO, Add::add)
            }
        }

        impl<'a> Sum<&'a $name> for $name {
            fn sum<I: Iterator<Item = &'a $name>>(iter: I) -> $name {
                iter.copied().sum()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} {}", self.0, $unit)
            }
        }
    };
}

amount!(Sat, "sat");
amount!(Msat, "msat");

impl Sat {
    /// The same amount in millisatoshis (saturating).
    pub fn to_msat(self) -> Msat {
        Msat(self.0.saturating_mul(1000))
    }
}

impl Msat {
    /// Whole satoshis, rounded down: what a payout can send.
    pub fn floor_sat(self) -> Sat {
        Sat(self.0 / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_saturate_and_convert_exactly() {
        assert_eq!(Sat(u64::MAX) + Sat(1), Sat(u64::MAX));
        assert_eq!(Sat(1) - Sat(2), Sat::ZERO);
        assert_eq!(Sat(2).checked_sub(Sat(3)), None);
        assert_eq!(Sat(7).to_msat(), Msat(7000));
        assert_eq!(Msat(7999).floor_sat(), Sat(7));
        assert_eq!([Sat(1), Sat(2)].iter().sum::<Sat>(), Sat(3));
        assert_eq!(Msat::from_db(-5), Msat::ZERO);
        assert_eq!(Sat(u64::MAX).to_db(), i64::MAX);
        assert_eq!(serde_json::to_string(&Sat(5)).expect("json"), "5");
        assert_eq!(Sat(5).to_string(), "5 sat");
    }
}
