//! Dates for the console and the webhook payloads: milliseconds since the
//! epoch to UTC text and back. The console shows UTC throughout, as the
//! stats are grouped by UTC day;
//! a date library for a dozen lines of civil-calendar arithmetic is not
//! worth its weight (algorithms from Howard Hinnant's "chrono-compatible
//! low-level date algorithms").

pub const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Midnight UTC of the day holding `ms`.
pub fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// `2025-11-26 14:03:07`
pub fn datetime(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let secs = ms.rem_euclid(DAY_MS) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2026-12-01T07:40:00.123Z`, as webhook payloads carry it.
pub fn rfc3339(ms: i64) -> String {
    format!(
        "{}.{:03}Z",
        datetime(ms).replacen(' ', "T", 1),
        ms.rem_euclid(1000)
    )
}

/// `2025-11-26`
pub fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `11-26`, for chart axes.
pub fn short_date(ms: i64) -> String {
    let (_, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{m:02}-{d:02}")
}

/// Midnight UTC of a `YYYY-MM-DD` date (what `<input type=date>` submits).
pub fn parse_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if !(all_digits(y) && all_digits(m) && all_digits(d)) {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // Rejects 2025-02-30 and the like: the day must survive the round trip.
    (civil_from_days(days) == (y, m, d)).then_some(days * DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(1_764_115_387_000), "2025-11-26 00:03:07");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(short_date(951_782_400_000), "02-29");
        assert_eq!(datetime(-1000), "1969-12-31 23:59:59");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_100_000_123), "2025-11-25T19:46:40.123Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn parses_dates_and_rejects_impossible_ones() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-02-29"), Some(951_782_400_000));
        for bad in [
            "",
            "2001-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-1-1",
            "abcd-ef-gh",
            "2025-01-32",
            "+202-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_every_day_over_centuries() {
        // Every day, not every seventh: a fault on one weekday or one date
        // (a leap day, the epoch) must not slip between the samples.
        for days in -200_000..200_000 {
            let ms = days * DAY_MS;
            assert_eq!(parse_date(&date(ms)), Some(ms));
            assert_eq!(day_start(ms + 5), ms);
        }
    }
}
