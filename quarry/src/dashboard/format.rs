//! Numbers and times as people read them.

/// `1.23 MH/s` and the like.
pub fn hashrate(hashes_per_sec: f64) -> String {
    crate::server::format_hashrate(hashes_per_sec)
}

/// A difficulty with an SI suffix: `0.00123`, `512`, `1.25 k`, `98.4 T`.
pub fn difficulty(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 {
        return "0".into();
    }
    if value < 0.001 {
        // Regtest: 4.66e-10, not a row of zeros.
        return format!("{value:.2e}");
    }
    if value < 1.0 {
        // CPU miners: significant digits.
        return trim(format!("{:.*}", decimals(value), value));
    }
    let units = ["", " k", " M", " G", " T", " P", " E"];
    let mut v = value;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < units.len() {
        v /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => trim(format!("{v:.2}")),
        _ => format!("{}{}", trim(format!("{v:.2}")), units[unit]),
    }
}

/// Decimals that show three significant digits of a value below 1.
fn decimals(value: f64) -> usize {
    let leading_zeros = (-value.log10()).floor().max(0.0) as usize;
    (leading_zeros + 3).min(12)
}

fn trim(text: String) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Satoshis as coins: `0.00012345`.
pub fn coins(sat: i64) -> String {
    let sign = if sat < 0 { "-" } else { "" };
    let sat = sat.unsigned_abs();
    format!("{sign}{}.{:08}", sat / 100_000_000, sat % 100_000_000)
}

/// How long ago: `12 s ago`, `3 min ago`, `5 h ago`, `2 d ago`.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// UTC `YYYY-MM-DD HH:MM:SS` for a `<time datetime>` title.
pub fn utc(ms: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(ms);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

/// ISO 8601 for `<time datetime>`.
pub fn iso(ms: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(ms);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// A chart's axis label: `HH:MM` within a day, `MM-DD` beyond.
pub fn axis(ms: i64, span_ms: i64) -> String {
    let (_, m, d, hh, mm, _) = civil(ms);
    if span_ms <= 86_400_000 {
        format!("{hh:02}:{mm:02}")
    } else {
        format!("{m:02}-{d:02}")
    }
}

/// Unix ms to UTC calendar fields (Howard Hinnant's days-from-civil, inverted).
fn civil(ms: i64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_and_numbers() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(iso(1_800_000_000_000), "2027-01-15T08:00:00Z");
        assert_eq!(difficulty(0.001234), "0.00123");
        assert_eq!(difficulty(1_250.0), "1.25 k");
        assert_eq!(difficulty(512.0), "512");
        assert_eq!(coins(123_456_789), "1.23456789");
        assert_eq!(ago(10_000, 7_000), "3 s ago");
        assert_eq!(path_segment("kaspa:qz 1/"), "kaspa:qz%201%2F");
    }
}
